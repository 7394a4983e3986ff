"""The workflow engine: what happens to a ticket after its message is stored (routing, assignment,
clocks, escalation). Pure decisions over the domain model; no provider code."""
