"""irkit: image-retrieval toolkit (text->image and composed image retrieval) on OpenCLIP."""

__version__ = "0.1.0"

from irkit.errors import InputError  # noqa: F401
