"""Data sources for ``data_tools.build``, one reader per source, each a ``Source``
(``base.py``): VOC layout (``voc.py``), a tag list of your own classes (``tags.py``) and MS
COCO (``coco.py``). Each adds its own flags and yields the same record item; ``SOURCES`` is
the list ``data_tools.build`` offers. A new source is one more module and one more entry.
"""
from data_tools.sources.base import (
    ROLES,
    Source,
    SourceError,
    class_names_problem,
    load_files,
    read_mask,
    read_saliency,
    role_for_split,
)
from data_tools.sources.coco import CocoSource
from data_tools.sources.tags import TagListSource, load_tag_item, read_class_list, read_tag_list
from data_tools.sources.voc import VocSource, check_root_and_list, load_item, read_id_list

SOURCES = (VocSource, TagListSource, CocoSource)

__all__ = ["ROLES", "SOURCES", "CocoSource", "Source", "SourceError", "TagListSource", "VocSource",
           "check_root_and_list", "class_names_problem", "load_files", "load_item", "load_tag_item",
           "read_class_list", "read_id_list", "read_mask", "read_saliency", "read_tag_list", "role_for_split"]
