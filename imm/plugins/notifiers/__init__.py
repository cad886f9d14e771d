"""Built-in notifier kinds (``webhook``), registered like any plugin's."""
