"""Loading ``.keras`` files safely, with errors that say what is wrong.

Every file the package reads goes through Keras' own safe mode (``.keras``),
JSON, CSV or ``np.load(..., allow_pickle=False)``: nothing it reads can run
code. :func:`load_keras_file` is the one place a ``.keras`` archive is opened
(``HybridInterpreter.load`` and the command line use it). It checks the file
before Keras sees it, loads it with ``safe_mode=True`` unless told otherwise,
and turns Keras' refusals (a Python lambda, a reference to an object that is
neither part of Keras nor registered, a truncated archive) into one
``ValueError`` naming the file and the reason.
"""

from __future__ import annotations

import json
import os
import re
import zipfile

__all__ = ["load_keras_file", "UnsafeFileError"]

#: Top-level packages whose objects a config may name without registration.
_TRUSTED_PACKAGES = ("keras", "keras_hybrid_interp", "builtins")


class UnsafeFileError(ValueError):
    """A ``.keras`` file that needs unsafe deserialization (it could run code)."""


def _messages(exc):
    """Messages of ``exc`` and of the exceptions it was raised from or during."""
    seen, out = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return out


def _foreign_references(config) -> list[str]:
    """``module.class`` names in a Keras config outside Keras, this package and the registry."""
    import keras

    found = []

    def walk(obj):
        if isinstance(obj, dict):
            module = obj.get("module")
            name = obj.get("class_name")
            if isinstance(module, str) and isinstance(name, str):
                registered = obj.get("registered_name")
                known = isinstance(registered, str) and keras.saving.get_registered_object(registered) is not None
                if module.split(".", 1)[0] not in _TRUSTED_PACKAGES and not known:
                    found.append(f"{module}.{name}")
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(config)
    return sorted(set(found))


def _has_lambda(config) -> bool:
    text = json.dumps(config)
    return '"__lambda__"' in text or '"class_name": "Lambda"' in text


def load_keras_file(filepath, *, safe_mode=True, argname="filepath"):
    """Loads a Keras v3 ``.keras`` archive (``compile=False``); raises clear errors.

    Parameters
    ----------
    filepath : str or os.PathLike
    safe_mode : bool
        Passed to ``keras.models.load_model``. Keep it True for files you did
        not write yourself: False lets the file run arbitrary Python code.
    argname : str
        How error messages name the file argument.

    Raises
    ------
    TypeError
        ``filepath`` is not a path.
    ValueError
        No such file; not a ``.keras`` archive (another format, truncated or
        corrupt); or the archive was refused. :class:`UnsafeFileError` (a
        ValueError) when it needs unsafe deserialization.
    """
    import keras

    if not isinstance(filepath, (str, os.PathLike)):
        raise TypeError(f"`{argname}` must be a path to a .keras file (str or os.PathLike); "
                        f"received {type(filepath).__name__}.")
    path = os.fspath(filepath)
    if not os.path.isfile(path):
        raise ValueError(f"`{argname}`: no such file: {path}")
    if not path.endswith(".keras"):
        raise ValueError(
            f"`{argname}` must be a Keras v3 .keras file (saved with model.save('name.keras')); received "
            f"{path!r}. Legacy .h5 and SavedModel formats are not read: load them in the Keras version that "
            "wrote them and save them again as .keras."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                raise ValueError(f"it holds {names[:5]}, without config.json")
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, ValueError, OSError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"`{argname}`: {path} is not a valid .keras archive (a zip file holding config.json, "
            f"metadata.json and model.weights.h5); it may be truncated or corrupt ({exc})."
        ) from None
    try:
        return keras.models.load_model(path, safe_mode=safe_mode, compile=False)
    except Exception as exc:  # Keras raises TypeError, ValueError, OSError, KeyError, ...
        messages = _messages(exc)
        text = "\n".join(messages)
        if safe_mode and ("safe_mode" in text or "lambda" in text.lower()) and _has_lambda(config):
            raise UnsafeFileError(
                f"`{argname}`: {path} was refused: it contains a Python lambda (a Lambda layer or a "
                "marshalled function), and loading it would run that code. Only if you trust its source, "
                "load it with safe_mode=False."
            ) from None
        foreign = _foreign_references(config)
        if foreign:
            raise ValueError(
                f"`{argname}`: {path} was refused: its config.json names {foreign[:5]}, which are neither "
                "Keras objects nor registered with @keras.saving.register_keras_serializable(); "
                "keras-hybrid-interp does not import arbitrary modules. If these are your own custom "
                "layers, import the module that registers them before loading."
            ) from None
        first = next((m for m in reversed(messages) if m), type(exc).__name__)
        first = re.sub(r"\s+", " ", first.split("Full object config")[0].split("\n\n")[0]).strip()
        raise ValueError(f"`{argname}`: could not load {path}: {type(exc).__name__}: {first}") from None
