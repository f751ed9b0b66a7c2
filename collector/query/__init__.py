"""Post-incident queries over the store: decisions, the rules in force, undeclared traffic."""
