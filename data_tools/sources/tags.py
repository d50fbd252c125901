"""A tag list as a data_tools.build source (``--tag-list tags.tsv --classes classes.txt``):
any classes, one line per image: ``image path<TAB>class,class[<TAB>mask path[<TAB>saliency
path]]``, paths relative to the list's folder."""
from __future__ import annotations

import os

from data_tools.sources.base import Source, SourceError, class_names_problem, load_files
from dcsp_dist.core.errors import UserError


def read_class_list(path: str) -> list[str]:
    """``classes.txt``: one object class per line -> ["background", ...]. ValueError if bad."""
    if not os.path.isfile(path):
        raise UserError(f"--classes {path}: no such file")
    with open(path) as fh:
        names = [line.strip() for line in fh if line.strip()]
    problem = class_names_problem(names)
    if problem:
        raise UserError(f"--classes {path} (one class per line): {problem}")
    return ["background"] + names


def read_tag_list(path: str) -> list[list[str]]:
    """``tags.tsv`` lines as fields: image path, comma-separated names[, mask path[, saliency path]]."""
    if not os.path.isfile(path):
        raise UserError(f"--tag-list {path}: no such file")
    with open(path) as fh:
        return [line.rstrip("\n").split("\t") for line in fh if line.strip() and not line.startswith("#")]


def load_tag_item(base: str, fields: list[str], class_names: list[str], role: str,
                  saliency_dir: str | None = None) -> dict:
    """The record item of one tag-list line (paths relative to ``base``, the list's folder)."""
    problems: list[str] = []
    image = os.path.join(base, fields[0])
    image_id = os.path.splitext(os.path.basename(fields[0]))[0]
    tags = set()
    for name in (n.strip() for n in (fields[1] if len(fields) > 1 else "").split(",")):
        if not name:
            continue
        if name not in class_names[1:]:
            problems.append(f"{image}: unknown class name {name!r} (not in the class list)")
        else:
            tags.add(class_names.index(name))
    masks = [os.path.join(base, fields[2])] if len(fields) > 2 and fields[2] else []
    if len(fields) > 3 and fields[3]:
        stem = os.path.splitext(os.path.join(base, fields[3]))[0]
    else:
        stem = os.path.join(saliency_dir, image_id) if saliency_dir else None
    return load_files(image_id, image, sorted(tags), problems, role, stem, masks, len(class_names))


class TagListSource(Source):
    """Images with their tags (and optional masks and saliency) listed in a file."""
    NAME, FLAG, COMPANIONS = "tag_list", "--tag-list", ("--classes",)
    TITLE = "your own images: --tag-list with --classes"

    def __init__(self, tag_list: str, classes: str, saliency_dir: str | None = None):
        try:
            self.class_names = read_class_list(classes)
            lines = read_tag_list(tag_list)
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        self.root, self.origin = os.path.dirname(os.path.abspath(tag_list)), tag_list
        self.ids = [os.path.splitext(os.path.basename(fields[0]))[0] for fields in lines]
        self.keys, self.saliency_dir = lines, saliency_dir
        self.default_split = os.path.splitext(os.path.basename(tag_list))[0]

    @classmethod
    def add_arguments(cls, group) -> None:
        group.add_argument("--tag-list", help="tags.tsv: image path<TAB>class,class[<TAB>mask path[<TAB>saliency "
                                              "path]] per line, paths relative to the file's folder")
        group.add_argument("--classes", help="with --tag-list: classes.txt, one object class per line "
                                             "(background is 0)")

    @classmethod
    def from_args(cls, args) -> TagListSource:
        if not args.classes:
            raise SourceError("--tag-list needs --classes")
        return cls(args.tag_list, args.classes, args.saliency_dir)

    def load(self, key, role: str) -> dict:
        return load_tag_item(self.root, key, self.class_names, role=role, saliency_dir=self.saliency_dir)
