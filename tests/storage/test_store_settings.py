"""A store owns its block of ``system.backups`` (issue 20): registered by its one line in
``REGISTERED``, its name becomes a value of ``system.backups.store`` and its block is parsed
and checked by the store when the configuration is read; ``config.py`` is not touched."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from wingsbak import config as configuration
from wingsbak.config import ConfigError, build_settings
from wingsbak.storage import select
from wingsbak.storage.base import BackupStore, StoreContext


@dataclass(slots=True)
class KeptSettings:
    key: ClassVar[str] = "kept"

    folder: str = ""
    copies: int = 1


class KeptStore(BackupStore):
    """Registered by the test only: its settings, nothing else (it is never built)."""

    name = "kept"
    settings_key = KeptSettings.key

    @classmethod
    def parse_settings(cls, raw: Any, chosen: bool) -> KeptSettings:
        cfg = build_settings(KeptSettings, raw, "system.backups.kept")
        if chosen and not cfg.folder:
            raise ConfigError(
                "system.backups.kept.folder: must be set for system.backups.store: kept"
            )
        if cfg.copies < 1:
            raise ConfigError("system.backups.kept.copies: must be at least 1")
        return cfg

    @classmethod
    def from_config(cls, ctx: StoreContext) -> None:
        return None


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(select, "REGISTERED", (*select.REGISTERED, KeptStore))


def backups(**keys: Any) -> dict[str, Any]:
    return {"system": {"backups": keys}}


def test_a_registered_store_is_a_choice_with_its_own_settings(registered: None) -> None:
    cfg = select.parse_config(backups(store="kept", kept={"folder": "/k", "copies": 2}))
    assert cfg.system.backups.store == "kept"
    assert cfg.system.backups.kept == KeptSettings(folder="/k", copies=2)
    parsed_again = cfg.system.backups.settings_of("kept", lambda raw: KeptSettings())
    assert parsed_again == KeptSettings("/k", 2)
    # A reload compares the store's keys one by one, as every other key.
    fresh = copy.deepcopy(cfg)
    fresh.system.backups.kept.copies = 3
    assert configuration.apply_reload(cfg, fresh) == ([], ["system.backups.kept.copies"])


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"store": "kept"}, "system.backups.kept.folder: must be set for system.backups.store"),
        ({"kept": {"copies": 0}}, "system.backups.kept.copies: must be at least 1"),
        ({"kept": {"copies": "two"}}, "system.backups.kept.copies: expected an integer"),
        ({"kept": ["x"]}, "system.backups.kept: expected a mapping"),
        ({"store": "gone"}, "system.backups.store: 'gone' is not one of local, s3, restic, kept"),
    ],
)
def test_the_store_checks_its_block_when_the_configuration_is_read(
    registered: None, keys: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        select.parse_config(backups(**keys))


def test_without_its_line_the_store_is_no_choice() -> None:
    with pytest.raises(ConfigError, match=r"'kept' is not one of local, s3, restic$"):
        select.parse_config(backups(store="kept"))
    # Its block is then nobody's: kept as read, refused by no one.
    assert select.parse_config(backups(kept={"copies": 0})).system.backups.raw["kept"]
