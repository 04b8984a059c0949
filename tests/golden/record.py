#!/usr/bin/env python3
"""Record golden checkpoint histories from LangGraph for Cairn's runtime.

Each scenario builds a small LangGraph ``StateGraph`` with an ``InMemorySaver``,
makes a sequence of calls (invoke / update_state / resume), and writes
``<scenario>.json`` next to this script: the graph definition in a
language-neutral form, the calls with their results, and the full checkpoint
history of every thread the scenario used, with uuids, timestamps and random
version suffixes replaced by stable indexes. See README.md for the format.

Usage:
    python3 -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install "langgraph==1.2.24"
    /tmp/golden-venv/bin/python tests/golden/record.py [scenario ...]
"""

from __future__ import annotations

import importlib.metadata
import json
import operator
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Interrupt, PregelTask, Send, interrupt

OUT_DIR = Path(__file__).resolve().parent
LANGGRAPH_VERSION = importlib.metadata.version("langgraph")
CHECKPOINT_VERSION = importlib.metadata.version("langgraph-checkpoint")

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HEX32_RE = re.compile(r"\b[0-9a-f]{32}\b")
NULL_TASK_ID = "00000000-0000-0000-0000-000000000000"

# Reducer descriptions used in the language-neutral graph definitions.
LAST_VALUE = "last_value (overwrite; at most one write per step)"
APPEND = "append (operator.add on lists: old + new)"


# --------------------------------------------------------------------------
# Conversion of LangGraph objects to plain JSON
# --------------------------------------------------------------------------


def to_json(obj: Any) -> Any:
    """Convert LangGraph values (Interrupt, Send, Command, errors, ...) to JSON."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, (set, frozenset)):  # e.g. the join barrier's seen-set; sorted for determinism
        return sorted(to_json(v) for v in obj)
    if isinstance(obj, Interrupt):
        out = {"type": "Interrupt", "value": to_json(obj.value), "id": obj.id}
        if obj.response_schema is not None:
            out["response_schema"] = to_json(obj.response_schema)
        return out
    if isinstance(obj, Send):
        return {"type": "Send", "node": obj.node, "arg": to_json(obj.arg)}
    if isinstance(obj, Command):
        out = {"type": "Command"}
        for field in ("graph", "update", "resume", "goto"):
            value = getattr(obj, field)
            if value is not None and value != ():
                out[field] = to_json(value)
        return out
    if isinstance(obj, BaseException):
        return {"type": "error", "error_type": type(obj).__name__, "message": str(obj)}
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON: {obj!r}")


def version_number(version: Any) -> Any:
    """InMemorySaver versions are '<32-digit int>.<random>'; keep the int."""
    if isinstance(version, str) and "." in version:
        return int(version.split(".")[0])
    return version


def sorted_writes(writes: list[tuple[str, str, Any]]) -> list[tuple[str, str, Any]]:
    """Pending writes grouped by task (in the saver's order), then by channel.

    LangGraph emits a task's writes to different channels in an order that can vary
    between runs (e.g. 'branch:to:a' / 'branch:to:b' come from a set), so writes of
    one task are stably sorted by channel; writes to the same channel keep their order.
    """
    first_seen: dict[str, int] = {}
    for task_id, _, _ in writes:
        first_seen.setdefault(task_id, len(first_seen))
    return sorted(writes, key=lambda w: (first_seen[w[0]], w[1]))


class CheckpointRef:
    """A raw checkpoint id, resolved to a history index when the fixture is written."""

    def __init__(self, config: dict | None):
        conf = (config or {}).get("configurable", {})
        self.thread_id = conf.get("thread_id")
        self.checkpoint_ns = conf.get("checkpoint_ns", "")
        self.checkpoint_id = conf.get("checkpoint_id")


# --------------------------------------------------------------------------
# Recorder
# --------------------------------------------------------------------------


class Recorder:
    """Runs calls against a compiled graph and records calls and histories."""

    def __init__(self, scenario: str, description: str, graph: dict, saver: InMemorySaver):
        self.scenario = scenario
        self.description = description
        self.graph = graph
        self.saver = saver
        self.calls: list[dict] = []
        self.threads: list[str] = []
        self.observations: dict[str, Any] = {}

    def config(self, thread: str, checkpoint: dict | None = None) -> dict:
        if thread not in self.threads:
            self.threads.append(thread)
        if checkpoint is not None:
            return checkpoint
        return {"configurable": {"thread_id": thread}}

    def _head(self, app, thread: str) -> CheckpointRef:
        return CheckpointRef(app.get_state({"configurable": {"thread_id": thread}}).config)

    def invoke(self, app, thread: str, input: Any, checkpoint: dict | None = None) -> Any:
        """app.invoke(input, config); records the return value or the raised error."""
        config = self.config(thread, checkpoint)
        call: dict[str, Any] = {"op": "invoke", "thread": thread, "input": to_json(input)}
        call["from_checkpoint"] = CheckpointRef(checkpoint) if checkpoint else None
        try:
            result = app.invoke(input, config)
            call["result"] = to_json(result)
        except Exception as exc:  # recorded, not fatal: node_error scenario expects it
            result = None
            call["raised"] = to_json(exc)
        call["head_after"] = self._head(app, thread)
        call["state_after"] = self.state_after(app, thread)
        self.calls.append(call)
        return result

    def update_state(self, app, thread: str, values: Any, as_node: str | None = None,
                     checkpoint: dict | None = None) -> dict:
        """app.update_state(config, values, as_node); records the returned config."""
        config = self.config(thread, checkpoint)
        returned = app.update_state(config, values, as_node=as_node)
        self.calls.append({
            "op": "update_state",
            "thread": thread,
            "values": to_json(values),
            "as_node": as_node,
            "from_checkpoint": CheckpointRef(checkpoint) if checkpoint else None,
            "returned_checkpoint": CheckpointRef(returned),
            "head_after": self._head(app, thread),
            "state_after": self.state_after(app, thread),
        })
        return returned

    def note(self, key: str, value: Any) -> None:
        self.observations[key] = to_json(value)

    # ---- history -----------------------------------------------------------

    def state_after(self, app, thread: str) -> dict:
        """The thread's latest state (app.get_state) right after a call, in history-entry form."""
        return self.snapshot_entry(app.get_state({"configurable": {"thread_id": thread}}), None)

    def snapshot_entry(self, snap, checkpoint_index: dict[str, int] | None) -> dict:
        conf = snap.config["configurable"]
        tup = self.saver.get_tuple(snap.config)
        metadata = dict(snap.metadata or {})
        extra = {k: v for k, v in metadata.items() if k not in ("step", "source", "parents", "run_id", "writes")}
        parent_id = (snap.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        task_names = {t.id: t.name for t in snap.tasks}
        ckpt = tup.checkpoint
        entry = {
            "checkpoint_ns": conf.get("checkpoint_ns", ""),
            "step": metadata.get("step"),
            "source": metadata.get("source"),
            "parents": to_json(metadata.get("parents", {})),
            "has_run_id": "run_id" in metadata,
            "metadata_writes": to_json(metadata["writes"]) if "writes" in metadata else None,
            "metadata_extra": to_json(extra),
            "next": list(snap.next),
            "values": to_json(snap.values),
            "parent_index": checkpoint_index.get(parent_id) if parent_id and checkpoint_index is not None else None,
            "tasks": [self.task_entry(t) for t in snap.tasks],
            "interrupts": to_json(list(snap.interrupts)),
            "pending_writes": [
                {"task_id": task_id, "task": task_names.get(task_id, "<null task>" if task_id == NULL_TASK_ID else None),
                 "channel": channel, "value": to_json(value)}
                for task_id, channel, value in sorted_writes(tup.pending_writes or [])
            ],
            "stored_checkpoint": {
                "channel_values": to_json(ckpt["channel_values"]),
                "channel_versions": {k: version_number(v) for k, v in ckpt["channel_versions"].items()},
                "versions_seen": {
                    node: {k: version_number(v) for k, v in seen.items()}
                    for node, seen in ckpt["versions_seen"].items()
                },
                "updated_channels": ckpt.get("updated_channels"),
            },
        }
        if checkpoint_index is None:  # a state_after entry: refer to checkpoints by reference
            del entry["parent_index"]
            entry["checkpoint"] = CheckpointRef(snap.config)
            entry["parent"] = CheckpointRef(snap.parent_config)
        else:
            entry["_id"] = conf["checkpoint_id"]
        return entry

    def task_entry(self, task: PregelTask) -> dict:
        entry: dict[str, Any] = {
            "id": task.id,
            "name": task.name,
            "path": to_json(task.path),
            "interrupts": to_json(list(task.interrupts)),
            "error": to_json(task.error) if task.error is not None else None,
            "result": to_json(task.result),
        }
        if task.state is not None:
            # For subgraph tasks: the config that addresses the subgraph's state.
            state = task.state if isinstance(task.state, dict) else task.state.config
            entry["state"] = {"checkpoint_ns": state["configurable"].get("checkpoint_ns")}
        return entry

    def namespace_history(self, app, thread: str, ns: str) -> list[dict]:
        if ns == "":
            snaps = list(app.get_state_history({"configurable": {"thread_id": thread}}))
        else:
            # Subgraph checkpoints: read them straight from the saver (newest first).
            snaps = [
                app.get_state(t.config)
                for t in self.saver.list({"configurable": {"thread_id": thread, "checkpoint_ns": ns}})
            ]
        ids = {s.config["configurable"]["checkpoint_id"]: i for i, s in enumerate(snaps)}
        return [self.snapshot_entry(s, ids) for s in snaps]

    def build(self, app) -> dict:
        histories: dict[str, dict[str, list[dict]]] = {}
        for thread in self.threads:
            namespaces = sorted(self.saver.storage.get(thread, {}).keys(), key=lambda ns: (ns != "", ns))
            histories[thread] = {ns: self.namespace_history(app, thread, ns) for ns in namespaces}
        fixture = {
            "scenario": self.scenario,
            "description": self.description,
            "langgraph_version": LANGGRAPH_VERSION,
            "langgraph_checkpoint_version": CHECKPOINT_VERSION,
            "graph": self.graph,
            "calls": self.calls,
            "observations": self.observations,
            "threads": self.threads,
            # Root namespace histories, newest first (what get_state_history returns).
            "history": {t: h[""] for t, h in histories.items()},
            # Subgraph namespaces (only scenarios with subgraphs have any).
            "subgraph_histories": {t: {ns: h for ns, h in hs.items() if ns} for t, hs in histories.items()
                                   if any(ns for ns in hs)},
        }
        return normalize(fixture, histories)


def normalize(fixture: dict, histories: dict[str, dict[str, list[dict]]]) -> dict:
    """Replace checkpoint ids by history indexes and other ids by stable labels."""
    positions: dict[str, dict] = {}
    for thread, by_ns in histories.items():
        for ns, entries in by_ns.items():
            for index, entry in enumerate(entries):
                positions[entry.pop("_id")] = {"thread": thread, "checkpoint_ns": ns, "index": index}

    labels: dict[str, str] = {NULL_TASK_ID: "NULL_TASK_ID"}
    counters = {"task": 0, "interrupt": 0}

    def label(raw: str, kind: str) -> str:
        if raw not in labels:
            if raw in positions:
                p = positions[raw]
                labels[raw] = f"checkpoint:{p['thread']}:{p['checkpoint_ns'] or 'root'}:{p['index']}"
            else:
                labels[raw] = f"{kind}-{counters[kind]}"
                counters[kind] += 1
        return labels[raw]

    def walk(value: Any) -> Any:
        if isinstance(value, CheckpointRef):
            if value.checkpoint_id is None:
                return None
            p = positions[value.checkpoint_id]
            return {"thread": p["thread"], "checkpoint_ns": p["checkpoint_ns"], "index": p["index"]}
        if isinstance(value, dict):
            return {walk(k): walk(value[k]) for k in value}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str):
            value = UUID_RE.sub(lambda m: label(m.group(0), "task"), value)
            return HEX32_RE.sub(lambda m: label(m.group(0), "interrupt"), value)
        return value

    # Walk histories first so labels follow history order (newest first).
    ordered = {k: fixture[k] for k in ("history", "subgraph_histories")}
    ordered.update({k: v for k, v in fixture.items() if k not in ordered})
    return walk(ordered)


# --------------------------------------------------------------------------
# Helpers for graph definitions
# --------------------------------------------------------------------------


def graph_def(state: dict, nodes: dict, edges: list, conditional_edges: list | None = None,
              compile: dict | None = None, **extra) -> dict:
    out = {
        "state": state,
        "nodes": [{"name": n, "behaviour": b} for n, b in nodes.items()],
        "edges": [list(e) if isinstance(e[0], str) else [list(e[0]), e[1]] for e in edges],
        "conditional_edges": conditional_edges or [],
        "compile": compile or {},
    }
    out.update(extra)
    return out


def chain_graph(state_cls, interrupt_before: list[str] | None = None):
    """START -> a -> b -> c -> END where each node appends its name to `steps`."""
    g = StateGraph(state_cls)
    for name in ("a", "b", "c"):
        g.add_node(name, lambda s, name=name: {"steps": [name]})
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    saver = InMemorySaver()
    return g.compile(checkpointer=saver, interrupt_before=interrupt_before), saver


class ChainState(TypedDict):
    value: str
    steps: Annotated[list[str], operator.add]


CHAIN_STATE = {"value": {"type": "str", "reducer": LAST_VALUE},
               "steps": {"type": "list[str]", "reducer": APPEND}}
CHAIN_NODES = {n: f"returns {{'steps': ['{n}']}}" for n in "abc"}
CHAIN_EDGES = [("__start__", "a"), ("a", "b"), ("b", "c"), ("c", "__end__")]


def thread_cfg(thread: str) -> dict:
    return {"configurable": {"thread_id": thread}}


def find_in_history(app, thread: str, pred: Callable) -> dict:
    for snap in app.get_state_history(thread_cfg(thread)):
        if pred(snap):
            return snap.config
    raise LookupError("no matching checkpoint")


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------


def linear_chain() -> tuple[Recorder, Any]:
    app, saver = chain_graph(ChainState)
    rec = Recorder("linear_chain", "START -> a -> b -> c -> END; each node appends its name to steps.",
                   graph_def(CHAIN_STATE, CHAIN_NODES, CHAIN_EDGES), saver)
    rec.invoke(app, "t1", {"value": "x", "steps": []})
    return rec, app


def conditional_loop() -> tuple[Recorder, Any]:
    class S(TypedDict):
        count: int

    g = StateGraph(S)
    g.add_node("inc", lambda s: {"count": s["count"] + 1})
    g.add_edge(START, "inc")
    g.add_conditional_edges("inc", lambda s: END if s["count"] >= 3 else "inc", ["inc", END])
    saver = InMemorySaver()
    app = g.compile(checkpointer=saver)
    rec = Recorder(
        "conditional_loop", "inc increments count; conditional edge loops back to inc until count >= 3.",
        graph_def({"count": {"type": "int", "reducer": LAST_VALUE}},
                  {"inc": "returns {'count': count + 1}"},
                  [("__start__", "inc")],
                  [{"source": "inc", "rule": "count >= 3 -> __end__, else -> inc",
                    "path_map": ["inc", "__end__"]}]),
        saver)
    rec.invoke(app, "t1", {"count": 0})
    return rec, app


class ItemsState(TypedDict):
    items: Annotated[list[str], operator.add]


def parallel_fanout_append() -> tuple[Recorder, Any]:
    g = StateGraph(ItemsState)
    g.add_node("plan", lambda s: {"items": ["plan"]})
    for r in ("r1", "r2", "r3"):
        g.add_node(r, lambda s, r=r: {"items": [f"from-{r}"]})
        g.add_edge("plan", r)
        g.add_edge(r, END)
    g.add_edge(START, "plan")
    saver = InMemorySaver()
    app = g.compile(checkpointer=saver)
    rec = Recorder(
        "parallel_fanout_append",
        "START -> plan; plan -> r1, r2, r3 in parallel (static edges), each appends to items; all -> END.",
        graph_def({"items": {"type": "list[str]", "reducer": APPEND}},
                  {"plan": "returns {'items': ['plan']}",
                   **{r: f"returns {{'items': ['from-{r}']}}" for r in ("r1", "r2", "r3")}},
                  [("__start__", "plan"), ("plan", "r1"), ("plan", "r2"), ("plan", "r3"),
                   ("r1", "__end__"), ("r2", "__end__"), ("r3", "__end__")],
                  node_order=["plan", "r1", "r2", "r3"]),
        saver)
    rec.invoke(app, "t1", {"items": []})
    return rec, app


def send_fanout() -> tuple[Recorder, Any]:
    class S(TypedDict):
        items: Annotated[list[str], operator.add]
        x: int

    g = StateGraph(S)
    g.add_node("router", lambda s: {"items": ["router"]})
    g.add_node("worker", lambda s: {"items": [f"w{s['x']}"]})
    g.add_edge(START, "router")
    g.add_conditional_edges("router", lambda s: [Send("worker", {"x": i}) for i in range(3)], ["worker"])
    g.add_edge("worker", END)
    saver = InMemorySaver()
    app = g.compile(checkpointer=saver)
    rec = Recorder(
        "send_fanout",
        "START -> router; router's conditional edge returns [Send('worker', {'x': i}) for i in 0..3]; "
        "each worker appends f'w{x}' to items; worker -> END.",
        graph_def({"items": {"type": "list[str]", "reducer": APPEND},
                   "x": {"type": "int", "reducer": LAST_VALUE}},
                  {"router": "returns {'items': ['router']}",
                   "worker": "input is the Send arg {'x': i}, not the graph state; returns {'items': [f'w{x}']}"},
                  [("__start__", "router"), ("worker", "__end__")],
                  [{"source": "router", "rule": "always returns [Send('worker', {'x': 0}), Send('worker', {'x': 1}), "
                    "Send('worker', {'x': 2})]", "path_map": ["worker"]}]),
        saver)
    rec.invoke(app, "t1", {"items": []})
    return rec, app


def fan_in_join() -> tuple[Recorder, Any]:
    class S(TypedDict):
        items: Annotated[list[str], operator.add]
        summary: str

    g = StateGraph(S)
    g.add_node("a", lambda s: {"items": ["a"]})
    g.add_node("b", lambda s: {"items": ["b"]})
    g.add_node("join", lambda s: {"summary": "+".join(s["items"])})
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge(["a", "b"], "join")
    g.add_edge("join", END)
    saver = InMemorySaver()
    app = g.compile(checkpointer=saver)
    rec = Recorder(
        "fan_in_join",
        "START -> a and START -> b in parallel; add_edge(['a', 'b'], 'join') waits for both; join writes summary.",
        graph_def({"items": {"type": "list[str]", "reducer": APPEND},
                   "summary": {"type": "str", "reducer": LAST_VALUE}},
                  {"a": "returns {'items': ['a']}", "b": "returns {'items': ['b']}",
                   "join": "returns {'summary': '+'.join(items)}"},
                  [("__start__", "a"), ("__start__", "b"), (("a", "b"), "join"), ("join", "__end__")],
                  edge_note="an edge whose source is a list is a join edge: target runs once after ALL sources ran "
                            "(LangGraph channel 'join:a+b:join', a NamedBarrierValue)"),
        saver)
    rec.invoke(app, "t1", {"items": []})
    return rec, app


def reinvoke_new_input() -> tuple[Recorder, Any]:
    class S(TypedDict):
        messages: Annotated[list[str], operator.add]

    g = StateGraph(S)
    g.add_node("reply", lambda s: {"messages": [f"echo:{s['messages'][-1]}"]})
    g.add_edge(START, "reply")
    g.add_edge("reply", END)
    saver = InMemorySaver()
    app = g.compile(checkpointer=saver)
    rec = Recorder(
        "reinvoke_new_input", "Chat-like graph START -> reply -> END invoked twice on one thread with new input.",
        graph_def({"messages": {"type": "list[str]", "reducer": APPEND}},
                  {"reply": "returns {'messages': [f'echo:{messages[-1]}']}"},
                  [("__start__", "reply"), ("reply", "__end__")]),
        saver)
    rec.invoke(app, "t1", {"messages": ["hi"]})
    rec.invoke(app, "t1", {"messages": ["again"]})
    return rec, app


def update_state_then_resume() -> tuple[Recorder, Any]:
    app, saver = chain_graph(ChainState, interrupt_before=["b"])
    rec = Recorder(
        "update_state_then_resume",
        "Chain a -> b -> c compiled with interrupt_before=['b']; invoke stops before b; "
        "update_state(as_node='a'); invoke(None) resumes.",
        graph_def(CHAIN_STATE, CHAIN_NODES, CHAIN_EDGES, compile={"interrupt_before": ["b"]}), saver)
    rec.invoke(app, "t1", {"value": "x", "steps": []})
    rec.update_state(app, "t1", {"value": "edited", "steps": ["manual"]}, as_node="a")
    rec.invoke(app, "t1", None)
    return rec, app


def replay() -> tuple[Recorder, Any]:
    app, saver = chain_graph(ChainState)
    rec = Recorder(
        "replay",
        "Run chain a -> b -> c; then invoke(None, config of the checkpoint whose next == ('b',)) to replay from it.",
        graph_def(CHAIN_STATE, CHAIN_NODES, CHAIN_EDGES), saver)
    rec.invoke(app, "t1", {"value": "x", "steps": []})
    before_b = find_in_history(app, "t1", lambda s: s.next == ("b",))
    rec.invoke(app, "t1", None, checkpoint=before_b)
    return rec, app


def fork() -> tuple[Recorder, Any]:
    app, saver = chain_graph(ChainState)
    rec = Recorder(
        "fork",
        "Run chain a -> b -> c; update_state on the past checkpoint whose next == ('b',) (no as_node) "
        "creating a fork; invoke(None, returned config) runs the new branch.",
        graph_def(CHAIN_STATE, CHAIN_NODES, CHAIN_EDGES), saver)
    rec.invoke(app, "t1", {"value": "x", "steps": []})
    before_b = find_in_history(app, "t1", lambda s: s.next == ("b",))
    forked = rec.update_state(app, "t1", {"value": "forked"}, checkpoint=before_b)
    rec.invoke(app, "t1", None, checkpoint=forked)
    return rec, app


def interrupt_resume() -> tuple[Recorder, Any]:
    class S(TypedDict):
        answer: str

    def ask(s):
        answer = interrupt("approve?")
        return {"answer": answer}

    g = StateGraph(S)
    g.add_node("ask", ask)
    g.add_edge(START, "ask")
    g.add_edge("ask", END)
    saver = InMemorySaver()
    app = g.compile(checkpointer=saver)
    rec = Recorder(
        "interrupt_resume", "Node ask calls interrupt('approve?'); invoke stops; Command(resume='yes') resumes.",
        graph_def({"answer": {"type": "str", "reducer": LAST_VALUE}},
                  {"ask": "answer = interrupt('approve?'); returns {'answer': answer}"},
                  [("__start__", "ask"), ("ask", "__end__")]),
        saver)
    rec.invoke(app, "t1", {"answer": ""})
    rec.invoke(app, "t1", Command(resume="yes"))
    return rec, app


def interrupt_before() -> tuple[Recorder, Any]:
    app, saver = chain_graph(ChainState, interrupt_before=["b"])
    rec = Recorder(
        "interrupt_before", "Chain a -> b -> c compiled with interrupt_before=['b']; invoke; invoke(None) continues.",
        graph_def(CHAIN_STATE, CHAIN_NODES, CHAIN_EDGES, compile={"interrupt_before": ["b"]}), saver)
    rec.invoke(app, "t1", {"value": "x", "steps": []})
    rec.invoke(app, "t1", None)
    return rec, app


EXECUTIONS: dict[str, int] = {}


def two_interrupts_one_node() -> tuple[Recorder, Any]:
    class S(TypedDict):
        first: str
        second: str

    EXECUTIONS.clear()

    def ask(s):
        EXECUTIONS["ask"] = EXECUTIONS.get("ask", 0) + 1
        first = interrupt("first?")
        second = interrupt("second?")
        return {"first": first, "second": second}

    g = StateGraph(S)
    g.add_node("ask", ask)
    g.add_edge(START, "ask")
    g.add_edge("ask", END)
    saver = InMemorySaver()
    app = g.compile(checkpointer=saver)
    rec = Recorder(
        "two_interrupts_one_node",
        "Node ask calls interrupt('first?') then interrupt('second?'); resumed twice with Command(resume=...).",
        graph_def({"first": {"type": "str", "reducer": LAST_VALUE}, "second": {"type": "str", "reducer": LAST_VALUE}},
                  {"ask": "first = interrupt('first?'); second = interrupt('second?'); "
                          "returns {'first': first, 'second': second}"},
                  [("__start__", "ask"), ("ask", "__end__")]),
        saver)
    rec.invoke(app, "t1", {"first": "", "second": ""})
    rec.invoke(app, "t1", Command(resume="one"))
    rec.invoke(app, "t1", Command(resume="two"))
    rec.note("ask_executions", EXECUTIONS["ask"])
    return rec, app


def command_goto() -> tuple[Recorder, Any]:
    g = StateGraph(ChainState)
    g.add_node("a", lambda s: Command(update={"steps": ["a"]}, goto="c"), destinations=("b", "c"))
    g.add_node("b", lambda s: {"steps": ["b"]})
    g.add_node("c", lambda s: {"steps": ["c"]})
    g.add_edge(START, "a")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    saver = InMemorySaver()
    app = g.compile(checkpointer=saver)
    rec = Recorder(
        "command_goto", "Node a returns Command(update={'steps': ['a']}, goto='c'), skipping b.",
        graph_def(CHAIN_STATE,
                  {"a": "returns Command(update={'steps': ['a']}, goto='c') (declared destinations: b, c)",
                   "b": "returns {'steps': ['b']}", "c": "returns {'steps': ['c']}"},
                  [("__start__", "a"), ("b", "c"), ("c", "__end__")]),
        saver)
    rec.invoke(app, "t1", {"value": "x", "steps": []})
    return rec, app


def subgraph_interrupt() -> tuple[Recorder, Any]:
    class S(TypedDict):
        steps: Annotated[list[str], operator.add]
        answer: str

    def sub_ask(s):
        answer = interrupt("sub approve?")
        return {"steps": ["sub_ask"], "answer": answer}

    sub = StateGraph(S)
    sub.add_node("sub_a", lambda s: {"steps": ["sub_a"]})
    sub.add_node("sub_ask", sub_ask)
    sub.add_edge(START, "sub_a")
    sub.add_edge("sub_a", "sub_ask")
    sub.add_edge("sub_ask", END)
    subgraph = sub.compile()

    g = StateGraph(S)
    g.add_node("pre", lambda s: {"steps": ["pre"]})
    g.add_node("sub", subgraph)
    g.add_node("post", lambda s: {"steps": ["post"]})
    g.add_edge(START, "pre")
    g.add_edge("pre", "sub")
    g.add_edge("sub", "post")
    g.add_edge("post", END)
    saver = InMemorySaver()
    app = g.compile(checkpointer=saver)
    state = {"steps": {"type": "list[str]", "reducer": APPEND}, "answer": {"type": "str", "reducer": LAST_VALUE}}
    rec = Recorder(
        "subgraph_interrupt",
        "Parent pre -> sub -> post where sub is a compiled subgraph (sub_a -> sub_ask) whose sub_ask calls "
        "interrupt('sub approve?'); resumed with Command(resume='ok').",
        graph_def(state,
                  {"pre": "returns {'steps': ['pre']}",
                   "sub": "compiled subgraph (same state schema), see subgraph",
                   "post": "returns {'steps': ['post']}"},
                  [("__start__", "pre"), ("pre", "sub"), ("sub", "post"), ("post", "__end__")],
                  subgraph={"name": "sub", "compile": {"checkpointer": "inherited from parent (None)"},
                            **graph_def(state,
                                        {"sub_a": "returns {'steps': ['sub_a']}",
                                         "sub_ask": "answer = interrupt('sub approve?'); "
                                                    "returns {'steps': ['sub_ask'], 'answer': answer}"},
                                        [("__start__", "sub_a"), ("sub_a", "sub_ask"), ("sub_ask", "__end__")])}),
        saver)
    rec.invoke(app, "t1", {"steps": [], "answer": ""})
    # The subgraph's own state while interrupted (get_state with subgraphs=True).
    snap = app.get_state(thread_cfg("t1"), subgraphs=True)
    sub_states = [t.state for t in snap.tasks if t.state is not None]
    rec.note("subgraph_state_while_interrupted", [
        {"checkpoint_ns": s.config["configurable"]["checkpoint_ns"], "values": s.values, "next": list(s.next),
         "step": s.metadata.get("step"), "source": s.metadata.get("source"),
         "tasks": [{"name": t.name, "interrupts": list(t.interrupts)} for t in s.tasks]}
        for s in sub_states])
    rec.invoke(app, "t1", Command(resume="ok"))
    return rec, app


def node_error_then_resume() -> tuple[Recorder, Any]:
    class S(TypedDict):
        items: Annotated[list[str], operator.add]

    EXECUTIONS.clear()

    def a(s):
        EXECUTIONS["a"] = EXECUTIONS.get("a", 0) + 1
        return {"items": ["a"]}

    def b(s):
        EXECUTIONS["b"] = EXECUTIONS.get("b", 0) + 1
        if EXECUTIONS["b"] == 1:
            raise ValueError("b failed on first attempt")
        return {"items": ["b"]}

    g = StateGraph(S)
    g.add_node("a", a)
    g.add_node("b", b)
    g.add_edge(START, "a")
    g.add_edge(START, "b")
    g.add_edge("a", END)
    g.add_edge("b", END)
    saver = InMemorySaver()
    app = g.compile(checkpointer=saver)
    rec = Recorder(
        "node_error_then_resume",
        "Parallel a and b from START; b raises ValueError on its first attempt; first invoke raises; "
        "invoke(None) resumes and only b re-runs (a's successful writes were saved as pending writes).",
        graph_def({"items": {"type": "list[str]", "reducer": APPEND}},
                  {"a": "counts executions; returns {'items': ['a']}",
                   "b": "counts executions; raises ValueError('b failed on first attempt') on the first call, "
                        "then returns {'items': ['b']}"},
                  [("__start__", "a"), ("__start__", "b"), ("a", "__end__"), ("b", "__end__")]),
        saver)
    rec.invoke(app, "t1", {"items": []})
    # State right after the failure, before resuming (pending writes of a and b's error).
    rec.note("executions_after_first_invoke", dict(EXECUTIONS))
    failed = app.get_state(thread_cfg("t1"))
    rec.note("state_after_failure", {
        "next": list(failed.next),
        "tasks": [{"name": t.name, "error": t.error, "result": t.result} for t in failed.tasks],
        "pending_writes": [{"channel": c, "value": v} for _, c, v in saver.get_tuple(failed.config).pending_writes],
    })
    rec.invoke(app, "t1", None)
    rec.note("executions_after_resume", dict(EXECUTIONS))
    return rec, app


SCENARIOS = [
    linear_chain, conditional_loop, parallel_fanout_append, send_fanout, fan_in_join, reinvoke_new_input,
    update_state_then_resume, replay, fork, interrupt_resume, interrupt_before, two_interrupts_one_node,
    command_goto, subgraph_interrupt, node_error_then_resume,
]


def main(argv: list[str]) -> None:
    wanted = set(argv)
    for scenario in SCENARIOS:
        if wanted and scenario.__name__ not in wanted:
            continue
        rec, app = scenario()
        fixture = rec.build(app)
        path = OUT_DIR / f"{rec.scenario}.json"
        path.write_text(json.dumps(fixture, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path.relative_to(OUT_DIR.parent.parent)}")


if __name__ == "__main__":
    main(sys.argv[1:])
