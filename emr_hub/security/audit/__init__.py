"""The audit trail: an AuditEvent for every interaction, durable before the answer is sent."""
