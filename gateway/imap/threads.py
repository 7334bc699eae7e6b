"""The RFC 5256 §3 threading algorithms, as pure functions from message facts to THREAD text.

REFERENCES follows the six steps of the RFC one by one (the comments carry their
numbers); ORDEREDSUBJECT is the "poor man's threading" of the same section. Both take
:class:`~gateway.core.sorting.ThreadFacts` in mailbox order and return the nested
lists of RFC 5256 §4 ``thread-list`` as bytes, numbers as the caller maps them (sequence
numbers or UIDs). Siblings are ordered by sent date, ties by mailbox order (§3 step 6).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby

from gateway.core.sorting import ThreadFacts


class _Node:
    """A message, or a dummy (``facts`` None) standing for a referenced message we lack."""

    __slots__ = ("children", "facts", "parent")

    def __init__(self, facts: ThreadFacts | None = None) -> None:
        self.facts = facts
        self.parent: _Node | None = None
        self.children: list[_Node] = []

    def is_ancestor_of(self, other: _Node) -> bool:
        node: _Node | None = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False

    def unlink(self) -> None:
        if self.parent is not None:
            self.parent.children.remove(self)
            self.parent = None

    def adopt(self, child: _Node) -> None:
        child.unlink()
        child.parent = self
        self.children.append(child)

    def representative(self) -> ThreadFacts | None:
        """This message, or for a dummy its first child's (§3 steps 5.B and 6)."""
        node = self
        while node.facts is None and node.children:
            node = node.children[0]
        return node.facts


def _link(parent: _Node, child: _Node) -> bool:
    """Make ``child`` a child of ``parent`` unless that makes a loop (§3 step 1.A/1.B)."""
    if child.is_ancestor_of(parent):
        return False
    parent.adopt(child)
    return True


def _date_key(node: _Node) -> tuple[int, int]:
    facts = node.representative()
    return (facts.sent, facts.uid) if facts is not None else (0, 0)


def references(messages: Sequence[ThreadFacts]) -> list[_Node]:
    """THREAD=REFERENCES, RFC 5256 §3: the sorted top-level threads."""
    table: dict[object, _Node] = {}
    for facts in messages:
        # (1) Message IDs: a missing one or a repeat gets a unique one of its own.
        key: object = facts.message_id
        node = table.get(key) if key is not None else None
        if node is None or node.facts is not None:
            if key is None or node is not None:
                key = object()
            node = table[key] = _Node(facts)
        else:
            node.facts = facts
        refs = []
        for ref in facts.references:
            ref_node = table.get(ref)
            if ref_node is None:
                ref_node = table[ref] = _Node()
            refs.append(ref_node)
        # (1.A) link the references pairwise; a message that has a parent keeps it.
        for parent, child in zip(refs, refs[1:], strict=False):
            if child.parent is None and parent is not child:
                _link(parent, child)
        # (1.B) the last reference is the parent: replace any (truncated) earlier link.
        node.unlink()
        if refs:
            _link(refs[-1], node)
    # (2) the root set: every node without a parent, in the order they were made.
    roots = [n for n in table.values() if n.parent is None]
    # (3) the id table is no longer needed. (4) prune dummies.
    roots = _prune(roots, at_root=True)
    # (5) gather threads with the same base subject. The RFC leaves open the order in
    # which the root set is walked; walking it oldest first (as after step 6) makes the
    # result independent of arrival order, and is what Dovecot does.
    _sort_tree(roots)
    roots = _gather_subjects(roots)
    # (6) sort siblings by sent date, children before parents.
    _sort_tree(roots)
    return roots


def _prune(nodes: list[_Node], *, at_root: bool) -> list[_Node]:
    """§3 step 4: a childless dummy goes; a dummy's children are promoted to its level,
    except to the root level when there is more than one of them."""
    out: list[_Node] = []
    for node in nodes:
        node.children = _prune(node.children, at_root=False)
        for child in node.children:
            child.parent = node
        if node.facts is not None:
            out.append(node)
        elif not node.children:
            continue
        elif not at_root or len(node.children) == 1:
            for child in node.children:
                child.parent = node.parent
            out.extend(node.children)
        else:
            out.append(node)
    for node in out:
        if at_root:
            node.parent = None
    return out


def _gather_subjects(roots: list[_Node]) -> list[_Node]:
    """§3 step 5: threads whose (first) message has the same base subject are merged."""
    subjects: dict[str, _Node] = {}
    # (5.B) the subject table: a dummy, or else a message that is not a reply, wins.
    for node in roots:
        facts = node.representative()
        if facts is None or not facts.subject:
            continue
        held = subjects.get(facts.subject)
        if held is None:
            subjects[facts.subject] = node
            continue
        held_facts = held.facts
        if held_facts is not None and (
            node.facts is None or (held_facts.reply_or_forward and not facts.reply_or_forward)
        ):
            subjects[facts.subject] = node
    # (5.C) merge every other thread into the one the table holds.
    out: list[_Node] = []
    for node in roots:
        facts = node.representative()
        held = subjects.get(facts.subject) if facts is not None and facts.subject else None
        if held is None or held is node:
            out.append(node)
            continue
        assert facts is not None
        if held.facts is None and node.facts is None:
            for child in list(node.children):
                held.adopt(child)
        elif held.facts is None:
            held.adopt(node)
        elif facts.reply_or_forward and not held.facts.reply_or_forward:
            held.adopt(node)
        else:
            dummy = _Node()
            position = out.index(held) if held in out else None
            dummy.adopt(held)
            dummy.adopt(node)
            subjects[facts.subject] = dummy
            if position is not None:
                out[position] = dummy
            else:
                _replace_later(roots, held, dummy)
    return out


def _replace_later(roots: list[_Node], old: _Node, new: _Node) -> None:
    """A thread not reached yet in step 5.C became part of ``new``: it stands in its place."""
    roots[roots.index(old)] = new


def _sort_tree(nodes: list[_Node]) -> None:
    for node in nodes:
        _sort_tree(node.children)
    nodes.sort(key=_date_key)


def ordered_subject(messages: Sequence[ThreadFacts]) -> list[_Node]:
    """THREAD=ORDEREDSUBJECT, RFC 5256 §3: messages grouped by base subject; each group's
    earliest message is the parent of the rest, threads in order of their first message."""
    ordered = sorted(messages, key=lambda f: (f.subject, f.sent, f.uid))
    threads: list[_Node] = []
    for _subject, group in groupby(ordered, key=lambda f: f.subject):
        members = list(group)
        root = _Node(members[0])
        for facts in members[1:]:
            root.adopt(_Node(facts))
        threads.append(root)
    threads.sort(key=_date_key)
    return threads


def thread_text(roots: Sequence[_Node], number: Callable[[int], int]) -> bytes:
    """RFC 5256 §4 ``thread-list``s: ``(1 2 (3)(4))``; ``number`` maps a UID to what the
    client asked for (its UID or its sequence number)."""
    out: list[str] = []

    def write(node: _Node) -> None:
        # A chain of only children is "a b c"; several children are nested lists.
        first = True
        while True:
            if node.facts is not None:
                out.append(("" if first else " ") + str(number(node.facts.uid)))
                first = False
            if len(node.children) == 1 and node.facts is not None:
                node = node.children[0]
                continue
            if node.children:
                if not first:
                    out.append(" ")
                for child in node.children:
                    out.append("(")
                    write(child)
                    out.append(")")
            return

    for root in roots:
        out.append("(")
        write(root)
        out.append(")")
    return "".join(out).encode("ascii")
