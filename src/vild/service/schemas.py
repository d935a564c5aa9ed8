"""Request and response shapes of the HTTP API (pydantic; they also make the OpenAPI schema)."""

from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field

Names = Optional[Union[list[str], str]]

_VOCAB_DOC = (
    "Category names: a list, or one comma-separated string. Absent or null: the model's "
    "default vocabulary."
)
_ATTR_DOC = "Attribute words (a list or one comma-separated string), or null."


class ExemplarSpec(BaseModel):
    """An example of what to find: a box in a cached image or in an image sent along."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="The label of what the example shows (a name of its own, or a "
                      "vocabulary name: then averaged with that name's text embedding)")
    image_id: Optional[str] = Field(default=None, description="An id from POST /v1/images")
    image: Optional[str] = Field(default=None, description="Or the image itself: base64 (or a data: URL)")
    box: Optional[list[float]] = Field(default=None, min_length=4, max_length=4,
                                       description="[x0, y0, x1, y1] in pixels of that image; null: the whole image")


class QueryRequest(BaseModel):
    """Score a vocabulary against a cached image (`POST /v1/images/{id}/query`)."""

    model_config = ConfigDict(extra="forbid")
    vocabulary: Names = Field(default=None, description=_VOCAB_DOC)
    attributes: Names = Field(default=None, description=_ATTR_DOC)
    exemplars: Optional[list[ExemplarSpec]] = Field(
        default=None, description="Examples of what to find, each a label beside the vocabulary's names "
        "(with exemplars, an empty vocabulary means the exemplars alone)")
    threshold: float = Field(default=0.3, ge=0.0, le=1.0, description="Minimum score kept.")
    max_detections: int = Field(default=100, ge=1, description="The most detections returned.")
    masks: bool = Field(default=True, description="Include RLE masks (when the model has masks).")


class DetectRequest(QueryRequest):
    """One image and what to look for in it (`POST /v1/detect` as JSON)."""

    image: str = Field(description="The image file's bytes in base64 (or a data: URL). URLs are not fetched.")
    method: Optional[str] = Field(default=None, description="Scoring method (see GET /v1/models); null: the model's own.")


class ImageRequest(BaseModel):
    """An image to embed and cache (`POST /v1/images` as JSON)."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="The image file's bytes in base64 (or a data: URL). URLs are not fetched.")
    method: Optional[str] = Field(
        default=None,
        description="Scoring method the cached regions are prepared for (the CLIP methods embed "
        "crops now, so that later queries stay a matrix product); null: the model's own.",
    )


class RLE(BaseModel):
    size: list[int] = Field(description="[H, W]")
    counts: str = Field(description="COCO compressed RLE (column-major), as pycocotools writes it")


class Detection(BaseModel):
    box: list[float] = Field(description="[x1, y1, x2, y2] in pixels of the uploaded image")
    score: float
    label: str
    label_id: int = Field(description="Index of the label in `vocabulary`")
    mask: Optional[RLE] = None


class DetectResponse(BaseModel):
    model: str
    method: Optional[str] = None
    vocabulary: list[str]
    attributes: Optional[list[str]] = None
    image_size: list[int] = Field(description="[H, W]")
    detections: list[Detection]
    timing_ms: dict[str, float]


class ImageResponse(BaseModel):
    id: str = Field(description="Use with POST /v1/images/{id}/query until it leaves the cache")
    image_size: list[int] = Field(description="[H, W]")
    timing_ms: dict[str, float]


class ErrorResponse(BaseModel):
    error: str = Field(description="A short machine-readable code")
    detail: str = Field(description="One line for people")


class ModelsResponse(BaseModel):
    models: list[dict]
    limits: dict


def form_schema(with_method: bool, with_query: bool) -> dict:
    """The multipart/form-data request body, for the OpenAPI schema."""
    props: dict = {"image": {"type": "string", "format": "binary", "description": "The image file"}}
    if with_query:
        props.update(
            vocabulary={"type": "string", "description": "Comma-separated category names"},
            attributes={"type": "string", "description": "Comma-separated attribute words"},
            exemplars={"type": "string", "description": "A JSON list of exemplars (as in a JSON body)"},
            threshold={"type": "number", "minimum": 0, "maximum": 1, "default": 0.3},
            max_detections={"type": "integer", "minimum": 1, "default": 100},
            masks={"type": "boolean", "default": True},
        )
    if with_method:
        props["method"] = {"type": "string"}
    return {"type": "object", "required": ["image"], "properties": props}
