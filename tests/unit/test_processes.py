import socket
import subprocess
import sys

from mallard.stack.processes import PidFile, is_alive, port_in_use, terminate


def test_pid_file_names_exactly_one_process(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        pid_file = PidFile(tmp_path / "x.pid")
        pid_file.write(proc.pid)
        assert pid_file.running_pid() == proc.pid
        # Same pid, other start time: a reused pid is not ours.
        data = pid_file.path.read_text().replace('"start_time": ', '"start_time": 1')
        pid_file.path.write_text(data)
        assert pid_file.running_pid() is None
        pid_file.write(proc.pid)
        assert terminate(proc.pid, timeout=5)
        assert not is_alive(proc.pid)
        assert pid_file.running_pid() is None
    finally:
        proc.kill()
        proc.wait()


def test_garbage_pid_file_is_not_running(tmp_path):
    (tmp_path / "x.pid").write_text("not json")
    assert PidFile(tmp_path / "x.pid").running_pid() is None
    assert PidFile(tmp_path / "missing.pid").running_pid() is None


def test_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)
