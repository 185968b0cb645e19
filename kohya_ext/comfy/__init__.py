"""ComfyUI node pack: the consistency check where the studio generates (docs/comfyui.md).

``kohya_ext.comfy.core`` holds the work (plain torch tensors, no ComfyUI needed);
``kohya_ext.comfy.nodes`` the nodes in ComfyUI's V3 API. ComfyUI finds them through
the repository's root ``__init__.py`` (a clone in ``ComfyUI/custom_nodes/``), which
re-exports :func:`comfy_entrypoint` from here.
"""

from __future__ import annotations

#: The ComfyUI release these nodes are tested with (tests/test_comfy_e2e.py); older
#: releases without ``comfy_api.latest`` / ``comfy_entrypoint`` are not supported.
TESTED_COMFYUI = "0.8.0"


async def comfy_entrypoint():
    """ComfyUI's V3 extension entry point (``comfy_api.latest.ComfyExtension``)."""
    try:
        from comfy_api.latest import ComfyExtension, io  # noqa: F401
    except ImportError as e:
        from ..errors import KohyaExtError

        raise KohyaExtError(
            f"kohya-ext's ComfyUI nodes need ComfyUI's V3 node API (comfy_api.latest; tested with ComfyUI "
            f"{TESTED_COMFYUI}), which this ComfyUI lacks ({e}): update ComfyUI"
        ) from None
    from .nodes import comfy_entrypoint as entry

    return await entry()
