"""Errors tunelab reports to users as one clear line."""

__all__ = ["ConfigError", "ConfigWarning", "TunelabError", "TunelabWarning"]


class TunelabError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits 2."""


class ConfigError(TunelabError):
    """A precision config (decoder_config JSON, `--optimizations` string, preset name) that cannot be used."""


class TunelabWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI prints it as one `warning:` line."""


class ConfigWarning(TunelabWarning):
    """A config that works but probably does not do what its author meant (e.g. an override file's stray id)."""
