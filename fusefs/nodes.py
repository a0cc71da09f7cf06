"""The union's inodes and open handles: what the kernel and open files refer to."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

ROOT_INO = 1


#: What a node with no open file holds: an empty set of its own costs 216 bytes, and a
#: container's daemon holds a node for each of the thousands of files its programs touched.
NO_HANDLES: frozenset[FileHandle] = frozenset()


class Node:
    """One inode of the union, alive while the kernel (or an open file) refers to it."""

    __slots__ = ("ino", "kind", "layer", "dirlayers", "names", "children", "nlookup", "handles", "nsubdirs",
                 "cached", "ghost")

    def __init__(self, ino: int, kind: int, layer: int, dirlayers: tuple[int, ...]) -> None:
        self.ino = ino
        self.kind = kind                  # S_IFMT bits
        self.layer = layer                # index of the top layer holding it (0 = upper)
        self.dirlayers = dirlayers        # for a directory: the layers merged into it, top first
        self.names: list[tuple[Node, bytes]] = []   # (parent, name); several for hard links
        self.children: dict[bytes, Node] = {}       # live children by name
        self.nlookup = 0
        #: Open files of this node; most nodes have none, and share one empty set (add_handle).
        self.handles: frozenset[FileHandle] | set[FileHandle] = NO_HANDLES
        self.nsubdirs: int | None = None  # cached count of subdirectories, for st_nlink
        #: The FUSE adapter's cache of this node's reply while it lives in a lower layer
        #: (immutable there); cleared when the node is copied up.
        self.cached: object | None = None
        #: For a removed directory still held open: what stat shows (st_nlink 0); its
        #: disk copy is gone, so fchmod and futimens change only this.
        self.ghost: Attr | None = None

    def add_handle(self, h: FileHandle) -> None:
        if isinstance(self.handles, frozenset):
            self.handles = set()
        self.handles.add(h)

    def drop_handle(self, h: FileHandle) -> None:
        if isinstance(self.handles, set):
            self.handles.discard(h)
            if not self.handles:
                self.handles = NO_HANDLES

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    @property
    def unlinked(self) -> bool:
        return not self.names and self.ino != ROOT_INO

    def __repr__(self) -> str:
        return f"<Node {self.ino} layer={self.layer} names={[n for _, n in self.names]}>"


@dataclass(eq=False)
class FileHandle:
    node: Node
    fd: int
    flags: int  # O_RDONLY / O_WRONLY / O_RDWR, as the physical file was opened
    #: Where the file's bytes are in FD and how many there are (-1: all of FD): a member
    #: of a layer tar is a slice of the tar.
    base: int = 0
    length: int = -1
    #: For a file opened in a lower layer: its name there, which stays valid (lower layers
    #: never change) after the union's name is gone.
    lower_rel: bytes | None = None


@dataclass(eq=False)
class DirHandle:
    node: Node
    entries: list[tuple[bytes, int]] = field(default_factory=list)  # (name, S_IFMT)


@dataclass(frozen=True)
class Attr:
    """What stat shows for a node: physical attributes with the recorded owner applied."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


@dataclass(frozen=True)
class Caller:
    uid: int
    gid: int
