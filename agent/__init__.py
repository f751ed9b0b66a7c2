"""The node agent: kernel events and rules in, batches to the collector out."""
