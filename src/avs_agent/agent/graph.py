"""Wiring only: load -> perceive -> propose -> verify -> [confirm: ask the person on a close call] ->
segment -> check -> (retry -> segment | propagate -> answer)."""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from avs_agent.agent import nodes
from avs_agent.agent.nodes import RunContext
from avs_agent.agent.state import AgentState


def build_graph(checkpointer=None):
    builder = StateGraph(AgentState, context_schema=RunContext)
    builder.add_node("load", nodes.load)
    builder.add_node("perceive", nodes.perceive)
    builder.add_node("propose", nodes.propose)
    builder.add_node("verify", nodes.verify)
    builder.add_node("confirm", nodes.confirm)
    builder.add_node("segment", nodes.segment)
    builder.add_node("check", nodes.check)
    builder.add_node("retry", nodes.retry)
    builder.add_node("propagate", nodes.propagate)
    builder.add_node("answer", nodes.answer)
    builder.add_edge(START, "load")
    builder.add_edge("load", "perceive")
    builder.add_edge("perceive", "propose")
    builder.add_edge("propose", "verify")
    builder.add_conditional_edges("verify", nodes.route_after_verify)
    builder.add_edge("confirm", "segment")
    builder.add_edge("segment", "check")
    builder.add_conditional_edges("check", nodes.route_after_check)
    builder.add_conditional_edges("retry", nodes.route_after_retry)
    builder.add_edge("propagate", "answer")
    builder.add_edge("answer", END)
    return builder.compile(checkpointer=checkpointer, name="avs-agent")


graph = build_graph()
"""The compiled graph (LangGraph Studio opens it through langgraph.json)."""
