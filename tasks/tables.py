"""The metadata tables: their schemas (the one source of truth) and how rows are built.

Types are written as strings (`string`, `int32`, `int64`, `float64`, `timestamp`,
`list<string>`, `list<float32>`, `map<string,string>`); the storage adapter maps them to parquet types and
`docs/metadata-tables.md` documents every column (a test keeps the two in step).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from catalogs.models import Campaign, RunRequest
from tasks.plan import Batch

SCHEMA_VERSION = 8  # what each version changed: docs/metadata-tables.md, "Schema versions"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    doc: str


GENERATIONS = (
    Column("schema_version", "int32", "version of this table's schema"),
    Column("asset_id", "string", "deterministic id of the image: sha256 over its inputs, parameters and model revision"),
    Column("run_id", "string", "run that generated the image"),
    Column("campaign", "string", "campaign name"),
    Column("product_id", "string", "catalog product"),
    Column("style_id", "string", "catalog style set"),
    Column("cell_index", "int32", "index of the prompt-matrix cell, in expansion order"),
    Column("cell", "map<string,string>", "axis name -> value of the matrix cell; with a|b|c optional parts, `optional` -> the parts switched on, joined by ' | '"),
    Column("prompt", "string", "the full prompt"),
    Column("negative_prompt", "string", "the negative prompt"),
    Column("seed", "int64", "seed of the image's own generator"),
    Column("mode", "string", "generation mode: ip_adapter, img2img (the first reference as init image) or preserve (background inpainted around the product's own pixels)"),
    Column("width", "int32", "image width in pixels"),
    Column("height", "int32", "image height in pixels"),
    Column("steps", "int32", "denoising steps"),
    Column("scheduler", "string", "sampler name"),
    Column("guidance", "float64", "classifier-free guidance scale"),
    Column("strength", "float64", "denoising strength from the init image (img2img, preserve); 1.0 in ip_adapter mode, which starts from noise"),
    Column("ip_scale", "float64", "IP-Adapter scale (of the adapter fed the style references)"),
    Column("ip_scale_scan_id", "string", "the style scan (`style_scans.scan_id`) whose recommended scale `ip_scale` is, "
           "for a campaign or style set with `ip_scale: auto`; null when the scale was set otherwise"),
    Column("ip_preset", "string", "UNet blocks the IP-Adapter feeds: full, style-only or layout-only (InstantStyle)"),
    Column("ip_start", "float64", "fraction of the denoising steps at which the IP-Adapter switches on"),
    Column("ip_end", "float64", "fraction of the denoising steps at which the IP-Adapter switches off"),
    Column("product_ip_scale", "float64", "scale of the IP-Adapter fed the product photo; 0 when the profile has none"),
    Column("combine", "string", "how the style set's references became one image prompt: concat, average or weighted"),
    Column("negative_reference_key", "string", "s3 URI of the negative reference image (replaces the zero unconditional image embedding); null without one"),
    Column("negative_reference_sha256", "string", "sha256 of the negative reference image; null without one"),
    Column("controlnet_scale", "float64", "ControlNet conditioning scale (every ControlNet that control_scales does not name)"),
    Column("controlnet_start", "float64", "fraction of the denoising steps at which the ControlNets switch on"),
    Column("controlnet_end", "float64", "fraction of the denoising steps at which the ControlNets switch off"),
    Column("control_scales", "map<string,string>", "conditioning scale of each of the profile's ControlNets, by control type"),
    Column("canny_low", "int32", "canny low threshold"),
    Column("canny_high", "int32", "canny high threshold"),
    Column("channel", "string", "the campaign's channel (placement) the image was made for; null for a campaign without `channels:` (one canvas, the product centred)"),
    Column("channel_aspect", "string", "the aspect the channel declares (`9:16`); null without a channel"),
    Column("anchor", "string", "where the channel pushes the product in the room its margin and safe zones leave: centre, left, right, top or bottom; null without a channel"),
    Column("box_left", "int32", "left edge of the product's box on the canvas, in pixels (the photo is fitted and centred in the box); null without a channel"),
    Column("box_top", "int32", "top edge of the product's box, in pixels; null without a channel"),
    Column("box_right", "int32", "right edge of the product's box, in pixels (exclusive); null without a channel"),
    Column("box_bottom", "int32", "bottom edge of the product's box, in pixels (exclusive); null without a channel"),
    Column("safe_zones", "list<string>", "the channel's text safe zones on the canvas, each `left,top,right,bottom` in pixels (right and bottom exclusive); empty without a channel"),
    Column("profile", "string", "model profile name"),
    Column("profile_revision", "string", "exact revision of the profile's weights"),
    Column("dtype", "string", "torch dtype the pipeline ran in"),
    Column("device", "string", "device the pipeline ran on (cpu, cuda:0, ...)"),
    Column("worker", "string", "worker that ran the shard (STYLEMATRIX_WORKER_NAME, default the host name)"),
    Column("torch_version", "string", "torch version"),
    Column("diffusers_version", "string", "diffusers version"),
    Column("transformers_version", "string", "transformers version"),
    Column("product_key", "string", "s3 URI of the product image"),
    Column("product_sha256", "string", "sha256 of the product image bytes"),
    Column("control_key", "string", "s3 URI of the control image of the profile's first ControlNet (canny in every shipped profile; another type where a profile lists another first); control_keys has every one"),
    Column("control_keys", "list<string>", "s3 URIs of the control images of every ControlNet of the profile, in its order"),
    Column("mask_key", "string", "preserve mode: s3 URI of the keep-mask on the canvas (255 = product pixels pasted back); null otherwise"),
    Column("reference_keys", "list<string>", "s3 URIs of the style set's reference images, in order"),
    Column("reference_sha256s", "list<string>", "sha256 of each reference image"),
    Column("made_by_run", "string", "run that generated the image: `run_id` itself, or an earlier run that died or "
           "was interrupted before it committed, whose verified image this run took over and recorded (the PNG stays "
           "under that run's folder)"),
    Column("output_key", "string", "s3 URI of the published PNG"),
    Column("sha256", "string", "sha256 of the published PNG bytes"),
    Column("bytes", "int64", "size of the published PNG"),
    Column("batch_index", "int32", "pipeline call the image was made in, within the run"),
    Column("batch_size", "int32", "images in that pipeline call"),
    Column("generation_seconds", "float64", "wall time of the pipeline call divided by its images"),
    Column("created_at", "timestamp", "when the image was published (UTC)"),
    Column("status", "string", "ok, gated (failed a campaign gate), duplicate (repeats a better image) or failed (unusable output)"),
    Column("status_reason", "string", "why the image is not ok: the failed gates with values, the image it repeats, or what is wrong with it; null when ok"),
    Column("product_mask", "string", "where the product region of the fidelity scores came from: file, alpha, auto, or none (the whole fitted photo); null when the photo or its mask could not be read while scoring (then the three fidelity scores are null too)"),
    Column("edge_f1", "float64", "F1 beyond chance of the image's canny edges against the canny control image's (without a canny ControlNet: the fitted product photo's, same thresholds), inside the product region, 2 px tolerance (1 = product edges kept, none added; 0 = chance)"),
    Column("product_ssim", "float64", "structural similarity of the product region to the product photo as placed on the canvas (1 = identical)"),
    Column("product_delta_e", "float64", "mean CIEDE2000 colour difference of the product region from the product photo (0 = same colours, about 2.3 = just noticeable)"),
    Column("clip_text", "float64", "cosine similarity of the CLIP embeddings of the image and its prompt"),
    Column("clip_style", "float64", "mean cosine similarity of the CLIP image embeddings of the image and the style set's references, weighted by reference weight"),
    Column("clip_model", "string", "CLIP weights behind clip_text and clip_style (source/subfolder@revision); null when CLIP scoring was off or could not load"),
    Column("sharpness", "float64", "variance of the Laplacian of the grey image (higher is crisper)"),
    Column("luminance", "float64", "mean luminance, 0 (black) to 1 (white)"),
    Column("clipped_share", "float64", "share of pixels crushed to black (grey <= 1) or blown to white (grey >= 254); for an image on a white background (a marketplace main image), of the product's pixels only"),
    Column("colourfulness", "float64", "Hasler-Suesstrunk colourfulness (0 = grey, about 100 = extremely colourful)"),
    Column("safe_zone_share", "float64", "channel check: share of the product's pixels (its mask as placed on the canvas) inside the channel's safe zones; 0 = clear of the copy's room; null when the product region is unknown"),
    Column("product_share", "float64", "channel check: share of the canvas the product's mask covers; null when the product region is unknown"),
    Column("product_cut", "float64", "channel check: share of the product's outline that runs along the canvas edge (0 = the whole product is in the picture); null when the product region is unknown"),
    Column("size_error", "float64", "channel check: largest difference in pixels between the output's width or height and the canvas's (0 = exact size)"),
    Column("aspect_error", "float64", "channel check: relative difference of the output's width:height from the aspect the channel declares (without a channel: the canvas's own), 0 = exact"),
    Column("background_hash", "string", "64-bit perceptual hash of the image with the product region blanked out, 16 hex digits"),
    Column("clip_embedding", "list<float32>", "the image's CLIP image embedding (unit length; the clip_model's), as computed for clip_text and clip_style; null when CLIP scoring was off. DuckDB: list_cosine_similarity"),
    Column("background_palette", "list<string>", "the background's palette (the pixels outside the product region, grown 2 px): up to 5 k-means colours in CIELAB, each `#rrggbb share`, heaviest first"),
    Column("background_lightness", "float64", "mean CIE L* of the background, 0 (black) to 100 (white)"),
    Column("background_cct", "float64", "correlated colour temperature of the background's mean colour in kelvin (McCamy), clamped to 1,000-25,000; null for a black background"),
    Column("duplicate_of", "string", "asset id of the better-scored near-duplicate this image repeats; null otherwise"),
    Column("gates_failed", "list<string>", "the campaign gates the image failed, as written in the campaign"),
    Column("score", "float64", "weighted score, 0 to 1, from per-product (and channel) percentile ranks of the weighted scores; with `selection.consistency`, blended with the image's agreement with the other products' picks (docs/metadata-tables.md, Consistency); null for gated and failed images"),
    Column("rank_in_cell", "int32", "rank by score among the ok images of its product, style set and cell (1 = best); null unless ok"),
    Column("rank_in_product", "int32", "rank by score among the ok images of its product (and channel) in the run (1 = best); null unless ok"),
    Column("selected", "bool", "one of the campaign's top_k ok images of its product (and channel)"),
    Column("consistency_distance", "float64", "distance of the image's look to the centre of its group (its style set, or the campaign with `selection.consistency.within: campaign`; per channel): the mean of the three distances below that the image has, each in units of a difference seen at a glance (0 = the centre's look; 1 = one clear difference); null for failed images"),
    Column("embedding_distance", "float64", "cosine distance of clip_embedding to the group's mean embedding, / 0.1; null without CLIP"),
    Column("palette_distance", "float64", "CIEDE2000 between background_palette and the group's medoid palette (nearest colours, weighted by share, both ways, halved), / 10"),
    Column("lighting_distance", "float64", "difference of background lightness (/ 10 L*) and colour temperature (/ 50 mired) from the group's medians, combined as a Euclidean length"),
    Column("consistency_outlier", "bool", "consistency_distance is past its group's fence: the median + 3 scaled median absolute deviations of the distances of the group's ok and duplicate images, and at least 1.0; never in a group of under 4 images"),
    Column("consistency_within", "string", "the group consistency_distance was measured in: style_set or campaign; null for failed images"),
)

RUNS = (
    Column("schema_version", "int32", "version of this table's schema"),
    Column("run_id", "string", "run id"),
    Column("campaign", "string", "campaign name"),
    Column("title", "string", "the campaign's title for people, in any language (`title:` in the spec); null without one"),
    Column("campaign_sha256", "string", "sha256 of the campaign spec as parsed (canonical JSON)"),
    Column("parameters", "string", "JSON object: `request` (the run request's overrides: campaign, catalog, assets, snapshot, profile, products, styles, axes, seeds), `products` and `styles` (the ids the run selected), `matrix` (template, axes, zip, negative, max_cells as run, `seeds` as a list), `generation` (the resolved generation settings, profile decided) `selection` (top_k, gates, weights, duplicate_distance, clip_model, consistency: weight and within, or null) and `channels` (the campaign's channels as written: name -> preset and overrides; empty without channels)"),
    Column("triggered_by", "string", "cli, demo, schedule, ui, api or test (the test suite)"),
    Column("flow_run_id", "string", "Prefect flow run id"),
    Column("catalog", "string", "s3 URI of the catalog"),
    Column("snapshot_id", "string", "catalog snapshot the run read (<catalog>/_snapshots/<snapshot_id>/)"),
    Column("assets", "string", "s3 URI of the assets bucket/prefix"),
    Column("profile", "string", "model profile name"),
    Column("profile_revision", "string", "exact revision of the profile's weights"),
    Column("device", "string", "device the pipeline ran on"),
    Column("dtype", "string", "torch dtype"),
    Column("started_at", "timestamp", "run start (UTC)"),
    Column("finished_at", "timestamp", "run end (UTC)"),
    Column("duration_seconds", "float64", "wall time of the run"),
    Column("products", "int32", "products selected"),
    Column("styles", "int32", "style sets selected"),
    Column("cells", "int32", "prompt-matrix cells"),
    Column("images_planned", "int32", "images the campaign asks for"),
    Column("images_generated", "int32", "images generated by this run"),
    Column("images_skipped", "int32", "images already published by an earlier run"),
    Column("images_selected", "int32", "images selected (top_k per product)"),
    Column("images_failed", "int32", "images generated but unusable (status failed)"),
    Column("batches", "int32", "pipeline calls"),
    Column("generation_wall_seconds", "float64", "wall time of the generation phase, from starting the shards until the last one finished (engine loading, generation, scoring and writing the images and parts; on the GPU pool also the wait for workers); 0 when nothing was generated"),
    Column("images_per_second", "float64", "images_generated / generation_wall_seconds: the run's throughput, so shards on parallel workers count once (the sum of per-image pipeline time is sum(generations.generation_seconds))"),
    Column("quarantined", "int32", "catalog objects refused as unusable"),
    Column("images_taken_over", "int32", "images a run that died before committing had made and verified, recorded "
           "by this run (their `made_by_run` names the run that made them)"),
    Column("images_left_to_others", "int32", "planned images another live run had claimed and was making: this run "
           "left them to it and recorded no row for them"),
    Column("left_to_runs", "list<string>", "the runs `images_left_to_others` were left to"),
    Column("left_out", "map<string,string>", "products and style sets the campaign names that the run left out, "
           "each with why (`product alarm-clock` -> `quarantined: ...` or `not in the catalog`); empty when none. "
           "A `strict` campaign fails instead"),
    Column("status", "string", "completed or nothing-new"),
    Column("consistency_spread", "float64", "how far the selected images are from one look: the mean of the style-set entries of consistency_spreads (0 = alike); null when no style set has two selected images"),
    Column("consistency_spreads", "map<string,string>", "spread of the selected images of each style set (`style_id`, with channels `style_id · channel`) and of all of them together (`campaign`, with channels `campaign · channel`): the mean consistency distance of each to the set's own centre; `-` under two images"),
)

CELL_METRICS = (
    Column("schema_version", "int32", "version of this table's schema"),
    Column("run_id", "string", "run that generated the images"),
    Column("campaign", "string", "campaign name"),
    Column("product_id", "string", "catalog product"),
    Column("style_id", "string", "catalog style set"),
    Column("cell_index", "int32", "index of the prompt-matrix cell, in expansion order"),
    Column("cell", "map<string,string>", "axis name -> value of the matrix cell; with a|b|c optional parts, `optional` -> the parts switched on, joined by ' | ' (as in generations)"),
    Column("images", "int32", "images of this product, style set and cell in the run (one per seed)"),
    Column("ok", "int32", "images with status ok"),
    Column("gated", "int32", "images with status gated"),
    Column("duplicates", "int32", "images with status duplicate"),
    Column("failed", "int32", "images with status failed"),
    Column("selected", "int32", "images selected"),
    Column("duplicate_rate", "float64", "duplicates / images"),
    Column("diversity", "float64", "mean pairwise Hamming distance of the background hashes / 64 (0 = all alike); null under two hashed images"),
    Column("mean_edge_f1", "float64", "mean edge_f1 of the images"),
    Column("mean_clip_text", "float64", "mean clip_text of the images"),
    Column("mean_clip_style", "float64", "mean clip_style of the images"),
    Column("best_score", "float64", "highest score among the ok images; null when none is ok"),
    Column("best_asset_id", "string", "asset id of that image"),
    Column("mean_consistency_distance", "float64", "mean consistency_distance of the images (how far this cell sits from its group's look); null when none has one"),
    Column("consistency_outliers", "int32", "images with consistency_outlier"),
)

STYLE_SCANS = (
    Column("schema_version", "int32", "version of this table's schema"),
    Column("scan_id", "string", "the scan: a hash of the style set's id and references (sha256s, weights, combine "
           "rule, preset), the profile and its revision, and the probe; the same inputs are never scanned twice"),
    Column("style_id", "string", "catalog style set"),
    Column("reference_keys", "list<string>", "s3 URIs of the style set's reference images, in order"),
    Column("reference_sha256s", "list<string>", "sha256 of each reference image"),
    Column("combine", "string", "how the references combine: concat, average or weighted"),
    Column("ip_preset", "string", "the style set's preset the probe images were made with"),
    Column("profile", "string", "model profile name"),
    Column("profile_revision", "string", "exact revision of the profile's weights"),
    Column("device", "string", "device the probe images were made on"),
    Column("dtype", "string", "torch dtype"),
    Column("catalog", "string", "s3 URI of the catalog"),
    Column("snapshot_id", "string", "catalog snapshot the style set was read from"),
    Column("probe", "string", "JSON object: the probe settings (scales, shapes, prompts, seeds, width, height, steps, "
           "guidance, scheduler, controlnet_scale, canny thresholds)"),
    Column("ip_scale", "float64", "the IP-Adapter scale of this row's probe images (one row per scale of the sweep)"),
    Column("images", "int32", "probe images at this scale (shapes x prompts x seeds)"),
    Column("mean_clip_style", "float64", "mean clip_style of the probe images (as in generations); null without CLIP"),
    Column("mean_clip_text", "float64", "mean clip_text of the probe images; null without CLIP"),
    Column("mean_edge_f1", "float64", "mean edge_f1 of the probe images against the probe shape's canny edges"),
    Column("mean_product_ssim", "float64", "mean product_ssim of the probe images inside the probe shape"),
    Column("mean_copy_ssim", "float64", "mean copy_ssim: structural similarity of the image to its closest reference "
           "at the canvas size (1 = the reference's layout copied)"),
    Column("mean_copy_patch", "float64", "mean copy_patch: share of the image's textured patches (4 x 4 grid) whose "
           "perceptual hash is within 10 bits of a reference patch (1 = every patch copied)"),
    Column("threshold", "float64", "the scan's copy threshold: the first scale past a tolerance (docs/style-scan.md); "
           "null when none was found in the range. The same on every row of the scan"),
    Column("recommended_scale", "float64", "the scale `ip_scale: auto` takes: just below the threshold (or, with "
           "none, the scale of highest style similarity)"),
    Column("threshold_measure", "string", "the measure that crossed its tolerance at the threshold; null without one"),
    Column("threshold_reason", "string", "the rule's verdict in one line"),
    Column("plot_key", "string", "s3 URI of the curves plot (PNG) with the threshold marked"),
    Column("sheet_key", "string", "s3 URI of the contact sheet of the probe grid per scale (JPEG)"),
    Column("triggered_by", "string", "cli, event (a catalog refresh), api or test"),
    Column("flow_run_id", "string", "Prefect flow run id"),
    Column("created_at", "timestamp", "when the scan was committed (UTC)"),
    Column("duration_seconds", "float64", "wall time of the scan"),
)

REVIEWS = (
    Column("schema_version", "int32", "version of this table's schema"),
    Column("review_id", "string", "one submitted review (or its timeout): the Prefect flow run id of the review"),
    Column("run_id", "string", "run whose images were reviewed"),
    Column("campaign", "string", "campaign name"),
    Column("asset_id", "string", "image the decision is about"),
    Column("product_id", "string", "catalog product of the image"),
    Column("selected", "bool", "the run had selected the image (false: a reviewer approved one it had not)"),
    Column("decision", "string", "approve, reject, hold, or timed-out (no decision came before the review's deadline; "
           "nothing is delivered). The latest review of a run wins, image by image"),
    Column("note", "string", "the reviewer's note on the image; null without one"),
    Column("reviewer", "string", "who decided: the name entered in the review form; null for a timeout"),
    Column("reviewed_at", "timestamp", "when the decision was submitted, or when the review timed out (UTC)"),
)

DELIVERIES = (
    Column("schema_version", "int32", "version of this table's schema"),
    Column("review_id", "string", "review whose approval delivered the image"),
    Column("run_id", "string", "run that published the source image"),
    Column("campaign", "string", "campaign name"),
    Column("asset_id", "string", "the delivered image's asset id"),
    Column("product_id", "string", "catalog product of the image"),
    Column("channel", "string", "the image's channel, whose `delivery:` format it was written in (the campaign's where the channel sets none); `default` for an image without a channel"),
    Column("source_key", "string", "s3 URI of the published PNG the delivery was made from: the finished image (`finishes.output_key`) where the run finished it, else the generated one"),
    Column("source_sha256", "string", "sha256 of that PNG"),
    Column("delivered_key", "string", "s3 URI of the delivered file: <assets>/delivery/<campaign>/<channel>/<product_id>/<asset_id>.<ext>"),
    Column("format", "string", "jpeg or webp"),
    Column("quality", "int32", "encoder quality the file was written at (stepped down from the format's quality to fit max_bytes)"),
    Column("max_bytes", "int64", "the format's size limit; null without one"),
    Column("metadata", "string", "strip (no EXIF, ICC or XMP) or keep (sRGB ICC profile, EXIF with the asset id)"),
    Column("width", "int32", "width of the delivered image in pixels"),
    Column("height", "int32", "height of the delivered image in pixels"),
    Column("bytes", "int64", "size of the delivered file"),
    Column("sha256", "string", "sha256 of the delivered file's bytes"),
    Column("delivered_at", "timestamp", "when the file was written (UTC)"),
)

# One row per finished image (tasks/finish.py, adapters/steps/finishing.py): upscaled, pasted back, shadowed, checked.
FINISHES = (
    Column("schema_version", "int32", "version of this table's schema"),
    Column("asset_id", "string", "the finished image's own asset id: sha256 over its source image, its finishing plan, size and refining model"),
    Column("source_asset_id", "string", "the `generations` image it was made from (its seed, prompt and parameters are there)"),
    Column("run_id", "string", "run that finished it"),
    Column("campaign", "string", "campaign name"),
    Column("product_id", "string", "catalog product"),
    Column("channel", "string", "the source image's channel; null without one"),
    Column("marketplace", "string", "the marketplace preset whose checks gate it (amazon-main, jd-main, tmall-main, shopify-square); null for other channels"),
    Column("background", "string", "white (the product on RGB 255 with only its shadow, composed from the catalog photo) or scene (the model's picture)"),
    Column("method", "string", "how it was brought to its size: lanczos, tile (Lanczos, then the tile ControlNet's img2img in blended tiles), x4 (the SD x4 upscaler), compose (a white-background image drawn at its size) or none (kept at the render's size)"),
    Column("upscale", "string", "the upscale settings as JSON (long_side, method, only, strength, steps, guidance, controlnet_scale, tile, overlap); null without an upscale"),
    Column("model_revision", "string", "revision of the weights that refined it (the profile's tile ControlNet or x4 upscaler); null for lanczos, compose and none"),
    Column("seed", "int64", "seed of the refinement's noise (the source image's seed)"),
    Column("source_width", "int32", "width of the source image in pixels"),
    Column("source_height", "int32", "height of the source image in pixels"),
    Column("width", "int32", "width of the finished image in pixels"),
    Column("height", "int32", "height of the finished image in pixels"),
    Column("shadow", "string", "the grounded shadow's settings as JSON (type, offset, blur, opacity, size, colour); null without one"),
    Column("paste_back", "bool", "the product's pixels were pasted from the catalog photo at the finished size (preserve mode, white background)"),
    Column("product_stretched", "bool", "the catalog photo was smaller than the product's box at the finished size and was stretched to fill it (see note)"),
    Column("note", "string", "what a person should know about this image (the stretched photo, in one line); null otherwise"),
    Column("product_ssim", "float64", "structural similarity of the product region to the catalog photo fitted at the finished size (1 = identical)"),
    Column("product_delta_e", "float64", "mean CIEDE2000 colour difference of the product region from that photo, at the finished size"),
    Column("long_side", "int32", "marketplace check: the finished image's long side in pixels"),
    Column("white_background_share", "float64", "marketplace check: share of the background (outside the product and its shadow) within 3 levels of RGB 255 on every channel; null for a scene background"),
    Column("product_fill", "float64", "marketplace check: the product's bounding box width or height as a share of the image's, whichever is larger"),
    Column("text_added", "bool", "marketplace check: text or a logo was drawn on the image (stylematrix draws none on a finished image; text a model painted is not detected)"),
    Column("checks_passed", "bool", "every check of its marketplace preset passed: only then is it delivered; null without a marketplace"),
    Column("check_reasons", "list<string>", "each failed check with its value and the threshold (`product_fill 0.62 < 0.85`); empty when all pass"),
    Column("output_key", "string", "s3 URI of the finished PNG"),
    Column("sha256", "string", "sha256 of the finished PNG bytes"),
    Column("bytes", "int64", "size of the finished PNG"),
    Column("finish_seconds", "float64", "wall time of finishing this image (reading, upscaling, composing, checking, writing)"),
    Column("created_at", "timestamp", "when the finished image was written (UTC)"),
)

TABLES = {"generations": GENERATIONS, "runs": RUNS, "cell_metrics": CELL_METRICS, "style_scans": STYLE_SCANS,
          "reviews": REVIEWS, "deliveries": DELIVERIES, "finishes": FINISHES}

# What a `generations` row carries until it is scored and selected.
UNSCORED: dict[str, object] = {
    **dict.fromkeys(("status_reason", "product_mask", "edge_f1", "product_ssim", "product_delta_e", "clip_text",
                     "clip_style", "clip_model", "sharpness", "luminance", "clipped_share", "colourfulness",
                     "safe_zone_share", "product_share", "product_cut", "size_error", "aspect_error", "background_hash", "duplicate_of", "score", "rank_in_cell", "rank_in_product",
                     "clip_embedding", "background_palette", "background_lightness", "background_cct", "consistency_distance",
                     "embedding_distance", "palette_distance", "lighting_distance", "consistency_within")),
    "consistency_outlier": False,
    "gates_failed": (),
    "selected": False,
}


@dataclass(frozen=True)
class RunContext:
    """What every row of a run shares."""

    run_id: str
    campaign: str
    device: str
    versions: dict[str, str]
    worker: str = ""


@dataclass(frozen=True)
class Published:
    """One image as stored."""

    asset_id: str
    uri: str
    sha256: str
    size: int
    made_by_run: str = ""  # the run that generated it, when not the run recording it (a taken-over image)


@dataclass(frozen=True)
class BatchInputs:
    """The stored objects one batch was made from, as its rows point at them."""

    product_key: str
    control_keys: tuple[str, ...]  # one per ControlNet of the profile, in its order
    reference_keys: tuple[str, ...]
    mask_key: str | None = None  # preserve mode's keep-mask
    negative_reference_key: str | None = None


def generation_rows(ctx: RunContext, batch: Batch, published: Sequence[Published], inputs: BatchInputs, *,
                    seconds: float, created_at: datetime) -> list[dict]:
    """One `generations` row per image of a batch."""
    if len(published) != len(batch.jobs):
        raise ValueError(f"batch {batch.index}: {len(batch.jobs)} jobs but {len(published)} images")
    rows = []
    for job, out in zip(batch.jobs, published, strict=True):
        if job.asset_id != out.asset_id:
            raise ValueError(f"batch {batch.index}: image {out.asset_id} does not belong to job {job.asset_id}")
        params = dict(job.params)
        rows.append(
            {
                "schema_version": SCHEMA_VERSION,
                "asset_id": job.asset_id,
                "run_id": ctx.run_id,
                "campaign": ctx.campaign,
                "product_id": job.product_id,
                "style_id": job.style_id,
                "cell_index": job.cell_index,
                "cell": list(job.cell.items()),
                "prompt": job.prompt,
                "negative_prompt": job.negative_prompt,
                "seed": job.seed,
                **{k: params[k] for k in ("mode", "width", "height", "steps", "scheduler", "guidance", "strength",
                                          "ip_scale", "ip_preset", "ip_start", "ip_end", "product_ip_scale", "combine",
                                          "controlnet_scale", "controlnet_start", "controlnet_end",
                                          "canny_low", "canny_high")},
                **layout_columns(params),
                "ip_scale_scan_id": job.ip_scale_scan or None,
                "negative_reference_key": inputs.negative_reference_key,
                "negative_reference_sha256": params["negative_reference"] or None,
                "control_scales": [(k, str(v)) for k, v in params["control_scales"].items()],
                "profile": job.profile,
                "profile_revision": job.profile_revision,
                "dtype": job.dtype,
                "device": ctx.device,
                "worker": ctx.worker,
                "torch_version": ctx.versions.get("torch", ""),
                "diffusers_version": ctx.versions.get("diffusers", ""),
                "transformers_version": ctx.versions.get("transformers", ""),
                "product_key": inputs.product_key,
                "product_sha256": job.product_sha256,
                "control_key": inputs.control_keys[0],
                "control_keys": list(inputs.control_keys),
                "mask_key": inputs.mask_key,
                "reference_keys": list(inputs.reference_keys),
                "reference_sha256s": list(job.reference_sha256s),
                "made_by_run": out.made_by_run or ctx.run_id,
                "output_key": out.uri,
                "sha256": out.sha256,
                "bytes": out.size,
                "batch_index": batch.index,
                "batch_size": len(batch.jobs),
                "generation_seconds": seconds / len(batch.jobs),
                "created_at": created_at,
                "status": "ok",
                **UNSCORED,
            }
        )
    return rows


def layout_columns(params: dict) -> dict:
    """The `generations` columns of a job's channel and resolved layout (nulls without a channel)."""
    box = params.get("product_box") or (None,) * 4
    return {
        "channel": params.get("channel"),
        "channel_aspect": params.get("aspect"),
        "anchor": params.get("anchor"),
        **dict(zip(("box_left", "box_top", "box_right", "box_bottom"), box, strict=True)),
        "safe_zones": [",".join(str(v) for v in z) for z in params.get("safe_zones") or ()],
    }


def to_frame(table: str, rows: Sequence[dict]) -> pd.DataFrame:
    """Rows as a DataFrame with exactly the table's columns, in order; raises on a missing or extra one."""
    columns = [c.name for c in TABLES[table]]
    for i, row in enumerate(rows):
        missing, extra = set(columns) - set(row), set(row) - set(columns)
        if missing or extra:
            raise ValueError(f"{table} row {i}: missing {sorted(missing)}, unexpected {sorted(extra)}")
    return pd.DataFrame(list(rows), columns=columns)


def run_parameters(request: RunRequest, campaign: Campaign, *, products: Sequence[str], styles: Sequence[str]) -> str:
    """The `runs.parameters` JSON: what was asked for and the settings the run resolved it to."""
    matrix = campaign.matrix.model_dump(mode="json")
    matrix["seeds"] = list(campaign.matrix.seed_list)
    return json.dumps({
        "request": request.model_dump(mode="json", exclude={"dry_run", "triggered_by"}),
        "products": list(products),
        "styles": list(styles),
        "matrix": matrix,
        "generation": campaign.generation.model_dump(mode="json"),
        "selection": campaign.selection.model_dump(mode="json"),
        "channels": channels_as_written(campaign),
    }, sort_keys=True)


def channels_as_written(campaign: Campaign) -> dict[str, dict]:
    """The campaign's `channels:` as `runs.parameters` records it: name -> preset and overrides."""
    return {name: spec.model_dump(mode="json", exclude_none=True) for name, spec in campaign.channels.items()}
