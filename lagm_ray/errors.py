"""The errors a user can cause and fix: each message names the file or the config key at fault.

Kept apart from the modules that raise them so that every layer (config, data, checkpoints, the CLI
that turns them into one line on stderr) can import them without importing each other."""


class ConfigError(ValueError):
    """A bad configuration value; the message names the key (and the file when there is one)."""


class DataError(ValueError):
    """A real dataset file is missing, unreadable or inconsistent; the message names the file."""


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be (safely) loaded; the message names the file."""


class UnsafePickleError(CheckpointError):
    """A pickle asks for a global outside the whitelist; nothing from it has been run."""
