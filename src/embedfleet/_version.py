"""The installed version, in a leaf module: every layer may read it without importing the
package root (which imports every layer)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("embedfleet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
