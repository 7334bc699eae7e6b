"""An in-memory :class:`~gateway.store.scripts.ScriptStore`: for tests, the demo, and
as the reference the contract suite holds every other backend to."""

from __future__ import annotations

from gateway.store.scripts import (
    ActiveScript,
    ScriptExists,
    ScriptInfo,
    ScriptIsActive,
    ScriptLimits,
    ScriptNotFound,
    check_space,
    script_size,
    validate_script_name,
)


class _Owner:
    __slots__ = ("active", "scripts")

    def __init__(self) -> None:
        self.scripts: dict[str, str] = {}
        self.active: str | None = None


class MemoryScriptStore:
    """Scripts in dicts, one per owner. Single-threaded like the reactor that uses it."""

    def __init__(self, limits: ScriptLimits | None = None) -> None:
        self.limits = limits if limits is not None else ScriptLimits()
        self._owners: dict[str, _Owner] = {}

    def _owner(self, owner: str) -> _Owner:
        found = self._owners.get(owner)
        if found is None:
            found = self._owners[owner] = _Owner()
        return found

    def _existing(self, owner: str, name: str) -> _Owner:
        validate_script_name(name)
        found = self._owners.get(owner)
        if found is None or name not in found.scripts:
            raise ScriptNotFound(name)
        return found

    def list_scripts(self, owner: str) -> list[ScriptInfo]:
        found = self._owners.get(owner)
        if found is None:
            return []
        return [ScriptInfo(name, name == found.active) for name in sorted(found.scripts)]

    def get_script(self, owner: str, name: str) -> str:
        return self._existing(owner, name).scripts[name]

    def have_space(self, owner: str, name: str, size: int) -> None:
        validate_script_name(name)
        found = self._owners.get(owner)
        scripts = found.scripts if found is not None else {}
        check_space(self.limits, len(scripts), name in scripts, size)

    def put_script(self, owner: str, name: str, text: str) -> None:
        self.have_space(owner, name, script_size(text))
        self._owner(owner).scripts[name] = text

    def delete_script(self, owner: str, name: str) -> None:
        found = self._existing(owner, name)
        if found.active == name:
            raise ScriptIsActive(name)
        del found.scripts[name]

    def rename_script(self, owner: str, old: str, new: str) -> None:
        validate_script_name(new)
        found = self._existing(owner, old)
        if new in found.scripts:
            raise ScriptExists(new)
        found.scripts[new] = found.scripts.pop(old)
        if found.active == old:
            found.active = new

    def set_active(self, owner: str, name: str) -> None:
        self._existing(owner, name).active = name

    def deactivate(self, owner: str) -> None:
        found = self._owners.get(owner)
        if found is not None:
            found.active = None

    def active_script(self, owner: str) -> ActiveScript | None:
        found = self._owners.get(owner)
        if found is None or found.active is None:
            return None
        return ActiveScript(found.active, found.scripts[found.active])
