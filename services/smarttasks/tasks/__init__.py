"""The task service: tasks with owners, assignees and deadlines; every change emits an event."""
