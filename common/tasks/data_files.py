"""Reading a data file with one-line errors: a binary file, text that is not UTF-8, a line longer than the csv
field limit or a corrupt parquet file is refused naming the file and what would be valid, never a traceback."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..errors import DataError

T = TypeVar("T")
VALID = "a UTF-8 text file (GLUE tsv, csv, json or jsonl, one example per line) or a parquet file"


def read_guarded(path: Path, read: Callable[[], T]) -> T:
    """``read()``, with its decoding and parsing failures turned into a :class:`DataError` naming ``path``."""
    try:
        return read()
    except DataError:
        raise
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (byte {e.start} is 0x{e.object[e.start]:02x}): it may be binary "
            f"or in another encoding; expected {VALID}"
        ) from None
    except csv.Error as e:
        limit = csv.field_size_limit()
        raise DataError(
            f"{path} cannot be read as {path.suffix.lstrip('.') or 'delimited'} text ({e}): expected "
            f"{VALID}, with fields of at most {limit} characters"
        ) from None
    except (ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {first}): expected {VALID}") from None
    except Exception as e:  # parquet readers raise their own kinds of errors for a corrupt file
        if path.suffix.lower() != ".parquet":
            raise
        raise DataError(f"{path} is not a readable parquet file ({type(e).__name__}): expected {VALID}") from None
