"""The agent: LangGraph state machine, decisions (rules or LLM), settings."""
