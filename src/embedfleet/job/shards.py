"""What a shard is: a list of pieces of source files, named by a hash of those pieces.

A *piece* is a whole file (a small file, a compressed or CSV file, one ``text_file``
document) or a range of a large one (a run of Parquet row groups, a byte range of an
uncompressed line file). A *shard* is one or more pieces holding about
``rows_per_shard`` rows: one Ray task, one part file, one commit marker.

A shard's id hashes its pieces' keys (relative path, unit, range) and nothing else, so it
is the same in every plan of the same files. A shard of one piece keeps the id every
earlier version gave that piece (``shard_id``): large files split as they always did.

A shard's ``source_version`` is its one piece's version (size plus etag/mtime), or, for
a packed shard, ``<total size>:<digest of the pieces' versions>``: it changes when any of
its files changes, so a resume re-embeds that shard and an up-to-date check sees it, and
a marker stays a few hundred bytes however many files its shard packs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Piece:
    """One file's part in a shard."""

    relative_path: str  # below the source root; the piece's URI is the shard's root + this
    format: str
    unit: str  # "rowgroups" | "bytes" | "file"
    start: int
    end: int
    estimated_rows: int
    first_row: int = 0  # Parquet: the file's row index of the first row group's first row
    estimated_bytes: int = 0  # text bytes, roughly (a token is at least one byte)
    source_version: str = ""  # the file's size and etag/mtime: a commit of another is stale

    @property
    def key(self) -> str:
        return f"{self.relative_path}|{self.unit}:{self.start}-{self.end}"


def shard_id(relative_path: str, unit: str, start: int, end: int) -> str:
    """The id of a shard of one piece (what every shard was before packing)."""
    return hashlib.sha256(f"{relative_path}|{unit}:{start}-{end}".encode()).hexdigest()[:16]


def pieces_id(pieces: tuple[Piece, ...]) -> str:
    """The id of a shard of ``pieces``: one piece's is ``shard_id`` of it."""
    keys = "\n".join(piece.key for piece in pieces)
    return hashlib.sha256(keys.encode()).hexdigest()[:16]


def pieces_version(pieces: tuple[Piece, ...]) -> str:
    """One piece: its version. Several: their total size and a digest of their versions,
    written ``size:digest`` when every version has a stamp (etag, mtime) beyond the size,
    like a single file's, so the up-to-date check treats both alike."""
    if len(pieces) == 1:
        return pieces[0].source_version
    digest = hashlib.sha256("\n".join(piece.source_version for piece in pieces).encode())
    if all(":" in piece.source_version for piece in pieces):
        total = sum(int(piece.source_version.split(":", 1)[0] or 0) for piece in pieces)
        return f"{total}:{digest.hexdigest()[:16]}"
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Shard:
    """One unit of work: the pieces of one or more files, read in order."""

    shard_id: str
    root: str  # the source's URI prefix: a piece's URI is root + relative path
    pieces: tuple[Piece, ...]
    estimated_rows: int
    estimated_bytes: int = 0
    source_version: str = ""

    @classmethod
    def of(cls, root: str, pieces: tuple[Piece, ...]) -> Shard:
        return cls(
            shard_id=pieces_id(pieces),
            root=root,
            pieces=pieces,
            estimated_rows=sum(piece.estimated_rows for piece in pieces),
            estimated_bytes=sum(piece.estimated_bytes for piece in pieces),
            source_version=pieces_version(pieces),
        )

    @property
    def packed(self) -> bool:
        """Whether the shard holds more than one piece."""
        return len(self.pieces) > 1

    def uri_of(self, piece: Piece) -> str:
        return self.root + piece.relative_path

    # One piece: that piece's fields, as every shard had them before packing. A packed
    # shard: its first file, unit "files" and the range 0..number of pieces.
    @property
    def uri(self) -> str:
        return self.uri_of(self.pieces[0])

    @property
    def relative_path(self) -> str:
        return self.pieces[0].relative_path

    @property
    def format(self) -> str:
        return self.pieces[0].format

    @property
    def unit(self) -> str:
        return "files" if self.packed else self.pieces[0].unit

    @property
    def start(self) -> int:
        return 0 if self.packed else self.pieces[0].start

    @property
    def end(self) -> int:
        return len(self.pieces) if self.packed else self.pieces[0].end

    @property
    def first_row(self) -> int:
        return self.pieces[0].first_row

    def describe(self) -> str:
        """The file, or the first and last of a packed shard's files."""
        if not self.packed:
            return self.uri
        last = self.pieces[-1].relative_path
        return f"{self.uri} .. {last} ({len(self.pieces)} files)"

    def file_named_in(self, message: str) -> str:
        """The relative path of the piece whose URI ``message`` names (errors name the
        file they failed on), else the shard's first file."""
        named = [piece.relative_path for piece in self.pieces if self.uri_of(piece) in message]
        return max(named, key=len) if named else self.relative_path

    def single(self, piece: Piece) -> Shard:
        """A shard of just ``piece`` (to read a sample of one file)."""
        return Shard.of(self.root, (piece,))
