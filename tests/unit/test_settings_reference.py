"""docs/settings.md is generated from the settings' field descriptions: it must be current."""
from pathlib import Path

from mallard.config.reference import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_the_settings_reference_is_current():
    assert DOC.read_text() == render(), "run: python -m mallard.config.reference > docs/settings.md"


def test_every_setting_of_every_service_is_in_it():
    from mallard.services.applier.config import ApplierSettings
    from mallard.services.scheduler.config import SchedulerSettings
    from mallard.services.snapshotter.config import SnapshotterSettings
    from mallard.stack.local import StackSettings

    text = DOC.read_text()
    for cls in (ApplierSettings, SnapshotterSettings, SchedulerSettings, StackSettings):
        for name in cls.model_fields:
            assert f"`MALLARD_{name.upper()}`" in text, name
