"""The node's rules turned into the declared model."""
