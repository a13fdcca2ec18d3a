"""The calculator of the Rotest tutorial: a kind, its SDK resource, and its RPyC device."""
