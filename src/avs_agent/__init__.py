"""avs-agent: what is making the sound? One package, four layers (each imports only those below it):

- ``avs_agent.apps``: the command line, chat, web page and serve commands (the composition root);
- ``avs_agent.evals``: AVSBench datasets, metrics, eval runner, cross-validation;
- ``avs_agent.agent``: the LangGraph state machine, its decisions, settings and reasoners;
- ``avs_agent.tools``: one module per pretrained-model tool, media, the tool server;

plus ``avs_agent.configs`` (profile YAML) and ``avs_agent.prompts`` (LLM prompts) as package data.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("avs-agent")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0"
