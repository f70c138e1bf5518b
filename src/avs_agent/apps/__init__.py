"""The command line, the chat and the web page: apps over the agent core."""
