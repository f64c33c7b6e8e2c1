"""The replication config file (YAML), validated with pydantic. Pure: the caller
reads the file; nothing here connects anywhere.

Every error is ONE line naming the file, the line and the key::

    replication.yaml:14: streams.public.orders.mode: unknown mode 'fast' (expected full-refresh or incremental)

Secrets are only ever environment variable references (``${MALLARD_PG_PASSWORD}``,
with no default but an empty one): the config keeps the reference, ``resolve_env``
gives the value to whoever connects, and nothing prints or writes the value back.
A key given twice is refused (YAML would keep the last one silently).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mallard.core import cron, names

Mode = Literal["full-refresh", "incremental"]
MODES = ("full-refresh", "incremental")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SCHEDULE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


class ConfigError(ValueError):
    """The config cannot be used; the message is one line: file:line: key: what is wrong."""


def env_refs(value: str) -> list[str]:
    return [m.group(1) for m in _ENV_REF.finditer(value)]


def resolve_env(value: str, env: Mapping[str, str]) -> str:
    """``${NAME}`` -> env[NAME]; ``${NAME:-default}`` -> env[NAME] or default. KeyError names a missing one."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1) in env:
            return env[m.group(1)]
        if m.group(2) is not None:
            return m.group(2)
        raise KeyError(m.group(1))
    return _ENV_REF.sub(sub, value)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConnection(_Model):
    """Postgres. Each value may be an env reference; the password must be one."""

    type: Literal["postgres"] = "postgres"
    host: str = "${MALLARD_PG_HOST:-127.0.0.1}"
    port: str = "${MALLARD_PG_PORT:-15432}"
    user: str = "${MALLARD_PG_USER:-mallard}"
    password: str = "${MALLARD_PG_PASSWORD}"
    database: str = "${MALLARD_PG_DATABASE:-shop}"

    @field_validator("port", mode="before")
    @classmethod
    def _port_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    @field_validator("password")
    @classmethod
    def _password_is_a_reference(cls, v: str) -> str:
        m = _ENV_REF.fullmatch(v)
        if not m:
            raise ValueError("a password must be an environment variable reference such as ${MALLARD_PG_PASSWORD}, "
                             "never the secret itself")
        # ${NAME:-} (no password: peer auth or ~/.pgpass) keeps no secret; any other default is one, in the file.
        if m.group(2):
            raise ValueError(f"a password reference may not carry a default (${{{m.group(1)}:-...}}): the default "
                             f"would be the secret itself, in the file; write ${{{m.group(1)}}}")
        return v

    def resolved(self, env: Mapping[str, str]) -> dict[str, str]:
        """host, port, user, password, database with references resolved (do not log it)."""
        out = {}
        for name in ("host", "port", "user", "password", "database"):
            try:
                out[name] = resolve_env(getattr(self, name), env)
            except KeyError as e:
                raise ConfigError(f"source.{name}: environment variable {e.args[0]} is not set") from None
        return out


class TargetConnection(_Model):
    type: Literal["duckdb"] = "duckdb"
    path: str = "${MALLARD_DUCKDB_PATH:-.mallard/duckdb/mallard.duckdb}"


def _checked_where(v: str | None) -> str | None:
    """A stream's filter, as Postgres' parser reads it (mallard/core/filters.py): one allowed expression."""
    from mallard.core.filters import check_filter

    return None if v is None else check_filter(v)


class StreamDefaults(_Model):
    mode: Mode = "full-refresh"
    primary_key: list[str] | None = None
    update_key: str | None = None
    where: str | None = None

    _where = field_validator("where")(_checked_where)

    @field_validator("primary_key", mode="before")
    @classmethod
    def _key_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class StreamConfig(_Model):
    mode: Mode | None = None
    primary_key: list[str] | None = Field(None, description="Key columns; default: the table's primary key.")
    update_key: str | None = Field(None, description="Incremental: the column whose value grows with every change.")
    where: str | None = Field(None, description="SQL filter: replicate only these rows.")
    _where = field_validator("where")(_checked_where)
    target: str | None = Field(None, description="Table in DuckDB: 'table' (in main) or 'schema.table', each part "
                               "double-quoted when it is not a plain name; default: the stream's table (public.<t> "
                               "-> <t>, <s>.<t> -> <s>.<t>).")
    replica_identity: Literal["full"] | None = Field(
        None, description="A table without a primary key: 'full' sets REPLICA IDENTITY FULL on it before it enters "
        "the publication, so its updates and deletes are replicated (each applied to one row equal to the old one); "
        "default: its inserts only are published (Postgres keeps accepting its UPDATE and DELETE).")

    @field_validator("target")
    @classmethod
    def _table_name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return names.table_name(*names.parse_table(v))
        except names.StreamNameError as e:
            raise ValueError(f"{e} (a DuckDB table: 'table' or 'schema.table')") from None

    @field_validator("primary_key", mode="before")
    @classmethod
    def _key_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("update_key")
    @classmethod
    def _column(cls, v: str | None) -> str | None:
        if v is not None and not _IDENT.match(v):
            raise ValueError(f"{v!r} is not a plain column name")
        return v


class Schedule(_Model):
    cron: str
    timezone: str = "UTC"
    streams: list[str] | Literal["*"] = "*"
    catch_up: Literal["once", "skip"] | None = Field(
        None, description="A fire missed while the scheduler was down: run once on start, or skip (default: the "
        "scheduler's MALLARD_SCHEDULER_CATCH_UP).")

    @field_validator("streams", mode="before")
    @classmethod
    def _one_stream(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) and v != "*" else v

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, v: str) -> str:
        try:
            cron.parse(v)
        except cron.CronError as e:
            raise ValueError(f"bad cron: {e}") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, v: str) -> str:
        try:
            cron.zone(v)
        except cron.CronError as e:
            raise ValueError(str(e)) from None
        return v


class ReplicationConfigModel(_Model):
    source: SourceConnection = Field(default_factory=SourceConnection)
    target: TargetConnection = Field(default_factory=TargetConnection)
    defaults: StreamDefaults = Field(default_factory=StreamDefaults)
    streams: dict[str, StreamConfig | None] = Field(min_length=1)
    schedules: dict[str, Schedule] = Field(default_factory=dict)


@dataclass(frozen=True)
class Stream:
    """One stream with the defaults applied."""

    name: str
    mode: str
    primary_key: tuple[str, ...] | None
    update_key: str | None
    where: str | None
    target: str | None
    line: int
    replica_identity: str | None = None
    """'full': a table without a primary key gets REPLICA IDENTITY FULL (mallard/core/keyless.py)."""

    @property
    def incremental(self) -> bool:
        return self.mode == "incremental"


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    cron: cron.Cron
    streams: tuple[str, ...]
    catch_up: str | None
    line: int


@dataclass(frozen=True)
class ReplicationConfig:
    path: str
    model: ReplicationConfigModel
    streams: dict[str, Stream]
    schedules: dict[str, ScheduleSpec]
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict, repr=False)
    written: dict[str, str] = field(default_factory=dict, repr=False)
    """stream -> its key as written in the file (``public."Order Items"`` may be written otherwise)"""

    def stream(self, name: str) -> Stream | None:
        """The stream named ``name`` however it is spelled (``public.orders``, ``"public"."orders"``)."""
        found = self.streams.get(name)
        if found is None:
            try:
                found = self.streams.get(names.canonical(name))
            except names.StreamNameError:
                return None
        return found

    def error(self, loc: tuple[Any, ...], message: str) -> ConfigError:
        """A ConfigError naming this file and the line of ``loc``."""
        if len(loc) > 1 and loc[0] == "streams" and loc[1] in self.written:
            loc = ("streams", self.written[loc[1]], *loc[2:])
        return ConfigError(f"{self.path}:{_line_for(self.lines, loc)}: {_dotted(loc)}: {message}")


# -- line numbers from the YAML nodes --------------------------------------------------

def _duplicate_key(node: yaml.Node, path: tuple[Any, ...] = ()) -> tuple[tuple[Any, ...], int, int] | None:
    """The first mapping key given twice anywhere (YAML keeps the last silently): (its
    location, its line, the line of the first), or None."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                line = k.start_mark.line + 1
                if (k.tag, k.value) in seen:
                    return path + (k.value,), line, seen[(k.tag, k.value)]
                seen[(k.tag, k.value)] = line
            found = _duplicate_key(v, path + (k.value if isinstance(k, yaml.ScalarNode) else str(k.value),))
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate_key(item, path + (i,))
            if found:
                return found
    return None


def _node_lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
            out[path + (key,)] = k.start_mark.line + 1
            out[path + (key, "__value__")] = v.start_mark.line + 1
            _node_lines(v, path + (key,), out)
            out[path + (key,)] = k.start_mark.line + 1  # the key's own line wins over its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, path + (i,), out)


def _line_for(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        text = tuple(str(p) for p in loc)  # a key YAML read as a number (streams: {1: ...})
        if text in lines:
            return lines[text]
        loc = loc[:-1]
    return lines.get((), 1)


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[") or "(top)"


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union/literal branch names from a location."""
    return tuple(p for p in loc if p not in ("StreamConfig", "str")
                 and not (isinstance(p, str) and p.startswith(("function-", "list[", "literal["))))


def _message(err: dict[str, Any]) -> str:
    kind, inp = err["type"], err.get("input")
    if kind == "literal_error" and err["loc"] and err["loc"][-1] == "mode":
        return f"unknown mode {inp!r} (expected {' or '.join(MODES)})"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    msg = err["msg"]
    return msg.removeprefix("Value error, ")


def parse_config(text: str, path: str = "replication.yaml") -> ReplicationConfig:
    """Parse and validate; ConfigError (one line) for anything wrong."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            line = mark.line + 1
        elif isinstance(e, yaml.reader.ReaderError):  # a control character: its position in the text
            line = text.count("\n", 0, e.position) + 1
        else:
            line = 1
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{line}: not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}:1: not valid YAML: nested too deeply") from None
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        duplicate = _duplicate_key(node)
        if duplicate:
            loc, line, first = duplicate
            raise ConfigError(f"{path}:{line}: {_dotted(loc)}: given twice (first on line {first}); YAML would keep "
                              "only the last")
        _node_lines(node, (), lines)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping with 'streams' (and 'schedules', 'defaults', 'source', 'target')")
    try:
        model = ReplicationConfigModel.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        # the most useful first: a mode or cron problem before a union's fallout
        err = errors[0]
        loc = _clean_loc(err["loc"])
        raise ConfigError(f"{path}:{_line_for(lines, loc)}: {_dotted(loc)}: {_message(err)}") from None
    config = ReplicationConfig(path, model, {}, {}, lines)
    d = model.defaults
    written = config.written
    for key, s in model.streams.items():
        s = s or StreamConfig()
        try:
            name = names.canonical(str(key))
        except names.StreamNameError as e:
            raise config.error(("streams", key), f"a stream is '<schema>.<table>': {e}") from None
        if name in written:
            raise config.error(("streams", key), f"the same table as {written[name]!r} (line "
                                                 f"{_line_for(lines, ('streams', written[name]))})")
        written[name] = key
        mode = s.mode or d.mode
        update_key = s.update_key or d.update_key
        if mode == "incremental" and not update_key:
            raise config.error(("streams", key), "mode incremental needs an update_key (the column that grows with "
                                                  "every insert and update, e.g. updated_at)")
        pk = s.primary_key or d.primary_key
        config.streams[name] = Stream(name, mode, tuple(pk) if pk else None, update_key,
                                      s.where if s.where is not None else d.where, s.target or default_target(name),
                                      _line_for(lines, ("streams", key)), s.replica_identity)
    for name, sched in model.schedules.items():
        if not _SCHEDULE_NAME.match(name):
            raise config.error(("schedules", name), "a schedule name is letters, digits, '_', '-' or '.'")
        streams = tuple(config.streams) if sched.streams == "*" else tuple(sched.streams)
        if sched.streams != "*":
            spelled = []
            for i, st in enumerate(streams):
                try:
                    st = names.canonical(st)
                except names.StreamNameError as e:
                    raise config.error(("schedules", name, "streams", i), str(e)) from None
                if st not in config.streams:
                    raise config.error(("schedules", name, "streams", i), f"unknown stream {st!r} (not under streams:)")
                spelled.append(st)
            streams = tuple(spelled)
        if not streams:
            raise config.error(("schedules", name, "streams"), "no streams")
        config.schedules[name] = ScheduleSpec(name, cron.parse(sched.cron, sched.timezone), streams, sched.catch_up,
                                              _line_for(lines, ("schedules", name)))
    return config


def default_target(stream: str) -> str:
    """The applier's naming: public.<t> -> <t>; <schema>.<t> keeps its schema (as written
    in a ``target:``, quoted where needed)."""
    schema, table = names.parse_stream(stream)
    return names.table_name(None if schema == "public" else schema, table)


def missing_tables_error(config: ReplicationConfig, missing: list[str]) -> ConfigError:
    first = missing[0]
    more = f" (and {', '.join(missing[1:])})" if len(missing) > 1 else ""
    return config.error(("streams", first), f"table {first} does not exist in Postgres{more}")


# -- day-two changes: what a new config changes against the running one ------------------

_STREAM_FIELDS = ("mode", "primary_key", "update_key", "where", "target", "replica_identity")


@dataclass(frozen=True)
class ConfigDiff:
    """What applying ``new`` over ``old`` changes (``diff_configs``)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """stream -> the settings of it that differ (mode, where, ...)"""
    schedules_added: tuple[str, ...] = ()
    schedules_removed: tuple[str, ...] = ()
    schedules_changed: tuple[str, ...] = ()
    fixed_changed: tuple[str, ...] = ()
    """'source' and/or 'target': what a running stack cannot take without a restart."""

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.schedules_added or self.schedules_removed
                    or self.schedules_changed or self.fixed_changed)

    @property
    def streams_changed(self) -> bool:
        """The set of streams differs: the connector's table list and the publication change."""
        return bool(self.added or self.removed)

    def describe(self) -> str:
        """One line for people: what changes."""
        parts = [f"+{s}" for s in self.added] + [f"-{s}" for s in self.removed]
        parts += [f"~{s} ({', '.join(fields)})" for s, fields in self.changed.items()]
        parts += [f"+schedule {n}" for n in self.schedules_added] + [f"-schedule {n}" for n in self.schedules_removed]
        parts += [f"~schedule {n}" for n in self.schedules_changed] + [f"~{n}" for n in self.fixed_changed]
        return ", ".join(parts) or "no change"


def diff_configs(old: ReplicationConfig, new: ReplicationConfig) -> ConfigDiff:
    """Streams added, removed and changed (by their canonical names), schedules likewise,
    and whether the source or target (fixed while the stack runs) differ."""
    added = tuple(s for s in new.streams if s not in old.streams)
    removed = tuple(s for s in old.streams if s not in new.streams)
    changed = {}
    for name, stream in new.streams.items():
        before = old.streams.get(name)
        if before is not None:
            fields = tuple(f for f in _STREAM_FIELDS if getattr(before, f) != getattr(stream, f))
            if fields:
                changed[name] = fields

    def schedule(spec: ScheduleSpec) -> tuple[Any, ...]:
        return spec.cron.expression, str(spec.cron.tz), spec.streams, spec.catch_up

    return ConfigDiff(
        added=added, removed=removed, changed=changed,
        schedules_added=tuple(n for n in new.schedules if n not in old.schedules),
        schedules_removed=tuple(n for n in old.schedules if n not in new.schedules),
        schedules_changed=tuple(n for n, spec in new.schedules.items()
                                if n in old.schedules and schedule(old.schedules[n]) != schedule(spec)),
        fixed_changed=tuple(part for part in ("source", "target")
                            if getattr(old.model, part) != getattr(new.model, part)))
