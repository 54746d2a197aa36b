"""Domain types, the conversation engine and the ports it needs. Imports no framework."""
