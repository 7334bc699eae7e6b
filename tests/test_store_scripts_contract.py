"""The ScriptStore contract (gateway/store/scripts.py), written once and run against
every backend; a stateful property test holds each backend to a brute-force model.

Adding a backend is one line in BACKENDS: a name and a function building an empty
store with the given limits in a temp dir (SQLite and PostgreSQL come at integration).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.store.interfaces import StoreError
from gateway.store.memory_scripts import MemoryScriptStore
from gateway.store.scripts import (
    MAX_SCRIPT_NAME_LENGTH,
    MAX_SCRIPT_SIZE,
    MAX_SCRIPTS,
    ActiveScript,
    BadScriptName,
    ScriptExists,
    ScriptInfo,
    ScriptIsActive,
    ScriptLimits,
    ScriptNotFound,
    ScriptStore,
    ScriptTooLarge,
    TooManyScripts,
)
from gateway.store.sqlite import SQLiteStore
from gateway.testing.postgres import close_test_store, open_test_store

_PG_STORES: list = []


def open_postgresql(tmp: Path, limits: ScriptLimits) -> ScriptStore:
    """A PostgreSQL store of its own (closed by :func:`close_all` or the model)."""
    store = open_test_store()
    store.limits = limits
    _PG_STORES.append(store)
    return store


def close_all() -> None:
    while _PG_STORES:
        close_test_store(_PG_STORES.pop())


BACKENDS: dict[str, Callable[[Path, ScriptLimits], ScriptStore]] = {
    "memory": lambda tmp, limits: MemoryScriptStore(limits),
    "sqlite": lambda tmp, limits: _sqlite(tmp, limits),
    "postgresql": open_postgresql,
}


def _sqlite(tmp: Path, limits: ScriptLimits) -> ScriptStore:
    """A fresh SQLite store (its own directory: a test may build several) with ``limits``."""
    store = SQLiteStore(Path(tempfile.mkdtemp(dir=tmp)) / "store.db")
    store.limits = limits
    return store


@pytest.fixture(params=sorted(BACKENDS))
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., ScriptStore]]:
    def make(limits: ScriptLimits | None = None) -> ScriptStore:
        return BACKENDS[request.param](tmp_path, limits or ScriptLimits())

    yield make
    close_all()


@pytest.fixture
def store(make_store: Callable[..., ScriptStore]) -> ScriptStore:
    return make_store()


def test_errors_are_store_errors() -> None:
    for error in (
        ScriptNotFound,
        ScriptExists,
        ScriptIsActive,
        BadScriptName,
        TooManyScripts,
        ScriptTooLarge,
    ):
        assert issubclass(error, StoreError)


def test_put_get_list_replace(store: ScriptStore) -> None:
    """put creates, a second put replaces; listings are sorted by name, per owner."""
    assert store.list_scripts("alice") == []
    store.put_script("alice", "b", "keep;")
    store.put_script("alice", "a", "discard;")
    store.put_script("alice", "b", "stop;")
    assert store.get_script("alice", "b") == "stop;"
    assert store.list_scripts("alice") == [ScriptInfo("a", False), ScriptInfo("b", False)]
    assert store.list_scripts("bob") == []
    with pytest.raises(ScriptNotFound):
        store.get_script("bob", "a")


def test_active_script_lifecycle(store: ScriptStore) -> None:
    """At most one active script; replacing or renaming it keeps it active; it cannot be
    deleted; deactivating leaves none (and is a no-op when there is none)."""
    store.deactivate("alice")
    assert store.active_script("alice") is None
    store.put_script("alice", "a", "keep;")
    store.put_script("alice", "b", "stop;")
    store.set_active("alice", "a")
    store.set_active("alice", "b")
    assert store.list_scripts("alice") == [ScriptInfo("a", False), ScriptInfo("b", True)]
    store.put_script("alice", "b", "discard;")
    assert store.active_script("alice") == ActiveScript("b", "discard;")
    with pytest.raises(ScriptIsActive):
        store.delete_script("alice", "b")
    store.rename_script("alice", "b", "c")
    assert store.active_script("alice") == ActiveScript("c", "discard;")
    store.deactivate("alice")
    assert store.active_script("alice") is None
    store.delete_script("alice", "c")
    assert [s.name for s in store.list_scripts("alice")] == ["a"]
    with pytest.raises(ScriptNotFound):
        store.set_active("alice", "nope")


def test_rename_rules(store: ScriptStore) -> None:
    store.put_script("alice", "a", "keep;")
    store.put_script("alice", "b", "keep;")
    with pytest.raises(ScriptExists):
        store.rename_script("alice", "a", "b")
    with pytest.raises(ScriptExists):
        store.rename_script("alice", "a", "a")
    with pytest.raises(ScriptNotFound):
        store.rename_script("alice", "zz", "y")
    with pytest.raises(BadScriptName):
        store.rename_script("alice", "a", "x\x00")
    with pytest.raises(ScriptNotFound):
        store.delete_script("alice", "zz")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a\x01b",
        "tab\there",
        "del\x7f",
        "c1\x85",
        "ls\u2028",
        "ps\u2029",
        "e\u0301",
        "x" * (MAX_SCRIPT_NAME_LENGTH + 1),
    ],
)
def test_bad_names_refused_everywhere(store: ScriptStore, name: str) -> None:
    """RFC 5804 §1.6: no control characters, NFC only, bounded length."""
    for call in (
        lambda: store.put_script("alice", name, "keep;"),
        lambda: store.get_script("alice", name),
        lambda: store.have_space("alice", name, 1),
        lambda: store.set_active("alice", name),
        lambda: store.delete_script("alice", name),
    ):
        with pytest.raises(BadScriptName):
            call()


def test_good_names(store: ScriptStore) -> None:
    for name in ("x" * MAX_SCRIPT_NAME_LENGTH, "Règles été", "a/b", "with space", "\u00e9"):
        store.put_script("alice", name, "keep;")
        assert store.get_script("alice", name) == "keep;"


def test_script_size_limit_edge(make_store: Callable[..., ScriptStore]) -> None:
    """Exactly max_script_size octets (UTF-8) fits; one more does not; HAVESPACE agrees."""
    store = make_store(ScriptLimits(max_script_size=10, max_scripts=5))
    store.put_script("alice", "a", "é" * 5)  # 10 octets
    store.have_space("alice", "b", 10)
    with pytest.raises(ScriptTooLarge):
        store.put_script("alice", "b", "é" * 5 + "x")
    with pytest.raises(ScriptTooLarge):
        store.have_space("alice", "b", 11)
    assert [s.name for s in store.list_scripts("alice")] == ["a"]


def test_script_count_limit_edge(make_store: Callable[..., ScriptStore]) -> None:
    """max_scripts scripts fit; one more is refused, but replacing one is fine."""
    store = make_store(ScriptLimits(max_script_size=100, max_scripts=3))
    for name in "abc":
        store.put_script("alice", name, "keep;")
    with pytest.raises(TooManyScripts):
        store.put_script("alice", "d", "keep;")
    with pytest.raises(TooManyScripts):
        store.have_space("alice", "d", 1)
    store.have_space("alice", "a", 1)
    store.put_script("alice", "a", "stop;")
    store.put_script("bob", "d", "keep;")  # the limit is per owner
    store.delete_script("alice", "c")
    store.put_script("alice", "d", "keep;")


def test_default_limits_are_the_named_constants(store: ScriptStore) -> None:
    assert store.limits == ScriptLimits(MAX_SCRIPT_SIZE, MAX_SCRIPTS)


# ---- the backend against a brute-force model --------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "d"])
OWNERS = st.sampled_from(["alice", "bob"])
TEXTS = st.sampled_from(["keep;", "stop;", "x" * 12])


def _model_backend(name: str) -> type[RuleBasedStateMachine]:
    class Model(RuleBasedStateMachine):
        """Every operation on the backend and on dicts must agree, errors included."""

        def __init__(self) -> None:
            super().__init__()
            self.directory = tempfile.TemporaryDirectory()
            self.store = BACKENDS[name](Path(self.directory.name), ScriptLimits(10, 3))
            self.scripts: dict[str, dict[str, str]] = {"alice": {}, "bob": {}}
            self.active: dict[str, str | None] = {"alice": None, "bob": None}

        def teardown(self) -> None:
            close = getattr(self.store, "close", None)
            if close is not None:
                close()
            self.directory.cleanup()

        def _same(self, call: Callable[[], object], expected: type[Exception] | None) -> bool:
            try:
                call()
            except StoreError as e:
                assert type(e) is expected, (e, expected)
                return False
            assert expected is None
            return True

        @rule(owner=OWNERS, n=NAMES, text=TEXTS)
        def put(self, owner: str, n: str, text: str) -> None:
            mine = self.scripts[owner]
            expected = (
                ScriptTooLarge
                if len(text) > 10
                else TooManyScripts
                if n not in mine and len(mine) >= 3
                else None
            )
            if self._same(lambda: self.store.put_script(owner, n, text), expected):
                mine[n] = text

        @rule(owner=OWNERS, n=NAMES)
        def delete(self, owner: str, n: str) -> None:
            mine = self.scripts[owner]
            expected = (
                ScriptNotFound
                if n not in mine
                else ScriptIsActive
                if self.active[owner] == n
                else None
            )
            if self._same(lambda: self.store.delete_script(owner, n), expected):
                del mine[n]

        @rule(owner=OWNERS, old=NAMES, new=NAMES)
        def rename(self, owner: str, old: str, new: str) -> None:
            mine = self.scripts[owner]
            expected = ScriptNotFound if old not in mine else ScriptExists if new in mine else None
            if self._same(lambda: self.store.rename_script(owner, old, new), expected):
                mine[new] = mine.pop(old)
                if self.active[owner] == old:
                    self.active[owner] = new

        @rule(owner=OWNERS, n=NAMES)
        def activate(self, owner: str, n: str) -> None:
            expected = ScriptNotFound if n not in self.scripts[owner] else None
            if self._same(lambda: self.store.set_active(owner, n), expected):
                self.active[owner] = n

        @rule(owner=OWNERS)
        def deactivate(self, owner: str) -> None:
            self.store.deactivate(owner)
            self.active[owner] = None

        @invariant()
        def agrees(self) -> None:
            for owner, mine in self.scripts.items():
                listing = [ScriptInfo(n, n == self.active[owner]) for n in sorted(mine)]
                assert self.store.list_scripts(owner) == listing
                active = self.active[owner]
                assert self.store.active_script(owner) == (
                    None if active is None else ActiveScript(active, mine[active])
                )

    Model.__name__ = f"Model_{name}"
    return Model


for _name in BACKENDS:
    _machine = _model_backend(_name)
    _machine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
    if _name == "postgresql":
        _machine.TestCase.pytestmark = [pytest.mark.postgres]
    globals()[f"test_model_{_name}"] = _machine.TestCase
