"""ColEagleProcessor / ColEagleModel in colpali-engine's flow.

Checked three ways: against ``EagleEmbedder`` run in-process (the vectors), against references written here (MaxSim
by brute force, the spatial layout of similarity maps), and against colpali-engine itself where it is installed:
its scoring and interpretability functions and its ``BaseVisualRetrieverProcessor`` signatures. colpali-engine's
package ``__init__`` imports every model and so needs torchvision, which has no build for this CPU torch; the
fixture below imports the modules these tests use (which need only torch and transformers) without it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import types

import pytest
import torch
from PIL import Image
from torch import nn
from transformers import BatchFeature

from nemo_eagle.embed.colpali import ColEagleModel, ColEagleProcessor

COLPALI_MODULES = ("colpali_engine.utils.processing_utils", "colpali_engine.interpretability.similarity_map_utils",
                   "colpali_engine.loss.late_interaction_losses")


@pytest.fixture(scope="module")
def colpali():
    """colpali-engine's processing and interpretability modules, imported without its package ``__init__``.

    It is found on the import path, or in ``$COLPALI_ENGINE_PATH`` (a ``pip install --no-deps --target DIR
    colpali-engine einops`` folder, which keeps its unmet torchvision requirement out of the environment's
    ``pip check``).
    """
    extra = os.environ.get("COLPALI_ENGINE_PATH")
    if extra:
        sys.path.append(extra)
    spec = importlib.util.find_spec("colpali_engine")
    if spec is None or importlib.util.find_spec("einops") is None:
        if extra:
            sys.path.remove(extra)
        pytest.skip("colpali-engine (and einops, for its similarity maps) not installed; it needs torchvision, so "
                    "install it with `pip install --no-deps [--target $COLPALI_ENGINE_PATH] colpali-engine einops`")
    saved = {k: v for k, v in sys.modules.items() if k == "colpali_engine" or k.startswith("colpali_engine.")}
    root = spec.submodule_search_locations[0]
    for name in ("colpali_engine", "colpali_engine.utils", "colpali_engine.interpretability", "colpali_engine.loss"):
        pkg = types.ModuleType(name)
        pkg.__path__ = [root + name[len("colpali_engine"):].replace(".", "/")]
        sys.modules[name] = pkg
    try:
        yield types.SimpleNamespace(**{m.rsplit(".", 1)[1]: importlib.import_module(m) for m in COLPALI_MODULES})
    finally:
        for k in [k for k in sys.modules if k == "colpali_engine" or k.startswith("colpali_engine.")]:
            del sys.modules[k]
        sys.modules.update(saved)
        if extra:
            sys.path.remove(extra)


@pytest.fixture(scope="module")
def col(multi_embedder):
    """One-tile pages (max_tiles=1), as the session's multi-vector embedder."""
    return ColEagleProcessor(multi_embedder), ColEagleModel(multi_embedder).eval()


@pytest.fixture(scope="module")
def tiled(tiny_ckpt):
    """Up to 4 tiles per page (plus the thumbnail), loaded the colpali-engine way."""
    model = ColEagleModel.from_pretrained(tiny_ckpt, torch_dtype=torch.float32, device_map="cpu", max_tiles=4,
                                          projection_dim=32).eval()
    return ColEagleProcessor.from_pretrained(tiny_ckpt, max_tiles=4, projection_dim=32), model


@pytest.fixture(scope="module")
def wide_page(page_factory):
    return page_factory(7, size=(900, 450))  # 2 x 1 tiles + thumbnail under max_tiles=4


def embed(model, batch):
    with torch.no_grad():
        return model(**batch.to(model.device))


def brute_maxsim(qs: list[torch.Tensor], ds: list[torch.Tensor]) -> torch.Tensor:
    """Sum over query tokens of the best dot product with any document token, one pair at a time."""
    out = torch.zeros(len(qs), len(ds))
    for i, q in enumerate(qs):
        for j, d in enumerate(ds):
            out[i, j] = sum(max(float(qt @ dt) for dt in d) for qt in q)
    return out


def real_rows(x: torch.Tensor) -> torch.Tensor:
    return x[x.abs().sum(-1) > 0]


# ---------------------------------------------------------------------------------------------- batches, model
def test_batches_are_batch_features_holding_the_model_inputs(col, pages):
    processor, _ = col
    images = processor.process_images(pages[:3])
    assert isinstance(images, BatchFeature)
    assert set(images) == {"input_ids", "attention_mask", "pixel_values", "num_tiles"}
    assert images["num_tiles"].tolist() == [1, 1, 1] and images["pixel_values"].shape[0] == 3
    moved = images.to("cpu")
    assert isinstance(moved, BatchFeature) and moved["input_ids"].dtype == torch.long
    half = images.to(torch.float16)  # BatchFeature casts floating tensors only
    assert half["pixel_values"].dtype == torch.float16 and half["input_ids"].dtype == torch.long
    queries = processor.process_queries(["red page", "a longer query about the blue page"])
    assert isinstance(queries, BatchFeature) and set(queries) == {"input_ids", "attention_mask"}
    assert processor.query_prefix == processor.embedder.config.query_prefix
    assert processor.tokenizer.encode(processor.query_augmentation_token) == [processor.tokenizer.pad_token_id]
    assert processor.tokenizer.encode(processor.image_token) == [processor.image_token_id]


def test_model_is_a_module_whose_vectors_are_the_embedders(col, multi_embedder, pages):
    processor, model = col
    assert isinstance(model, nn.Module) and model.device == torch.device("cpu") and model.dtype == torch.float32
    assert {id(p) for p in model.parameters()} == {id(p) for p in multi_embedder.parameters()}
    docs = [pages[0], pages[1], (pages[2], "caption")]
    images = embed(model, processor.process_images(docs))
    queries = embed(model, processor.process_queries(["red page", "a longer query about the blue page"]))
    assert images.dim() == 3 and images.shape[0] == 3 and images.shape[-1] == model.dim == 32
    want_docs = multi_embedder.embed_documents(docs)
    want_queries = multi_embedder.embed_queries(["red page", "a longer query about the blue page"])
    for got, want in zip(list(images) + list(queries), want_docs + want_queries):
        torch.testing.assert_close(real_rows(got), want, atol=1e-5, rtol=1e-4)
    # the same token counts as the embedder's own batching, padding zero
    assert processor.process_images(docs)["attention_mask"].sum(1).tolist() == [len(w) for w in want_docs]


def test_text_passages_and_as_given_texts(col, multi_embedder):
    processor, model = col
    passages = embed(model, processor.process_texts(["a text passage"], input_type="passage"))
    torch.testing.assert_close(real_rows(passages[0]), multi_embedder.embed_documents(["a text passage"])[0])
    as_given = processor.process_texts([processor.query_prefix + "red page"])
    assert torch.equal(as_given["input_ids"], processor.process_queries(["red page"])["input_ids"])


def test_forward_is_differentiable(tiled):
    processor, model = tiled
    out = model(**processor.process_queries(["a query"]))
    out.pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    model.zero_grad(set_to_none=True)


def test_colpali_engines_loss_trains_the_model(colpali, tiled, pages, monkeypatch):
    """One gradient step on colpali-engine's ColbertLoss (in-batch InfoNCE) through the model lowers that loss."""
    monkeypatch.setenv("COLPALI_SCORES_BACKEND", "torch")
    processor, model = tiled
    loss_fn = colpali.late_interaction_losses.ColbertLoss()
    queries, docs = (
        processor.process_queries(["red page", "blue page", "green page"]),
        processor.process_images(pages[:3]),
    )
    weight = model.embedder.projection.weight
    before = weight.detach().clone()
    try:
        loss = loss_fn(model(**queries), model(**docs))
        loss.backward()
        with torch.no_grad():
            weight -= 1e-2 * weight.grad / weight.grad.norm()
            after = loss_fn(model(**queries), model(**docs))
        assert torch.isfinite(loss) and float(after) < float(loss.detach())
    finally:
        with torch.no_grad():
            weight.copy_(before)
        model.zero_grad(set_to_none=True)


def test_different_images_give_different_vectors(col, pages):
    processor, model = col
    batch = processor.process_images([pages[0], pages[1], pages[0]])
    out = embed(model, batch)
    mask = processor.get_image_mask(batch)
    img = [out[i][mask[i]] for i in range(3)]
    assert (img[0] - img[1]).abs().max() > 1e-2  # another page: other image-token vectors
    torch.testing.assert_close(img[0], img[2])  # the same page: the same vectors
    # and it reaches the text after the image (bidirectional embedder): the whole-page vectors differ too
    assert (out[0] - out[1]).abs().max() > 1e-2


# -------------------------------------------------------------------------------------------------- scoring
def test_score_multi_vector_equals_brute_force_maxsim(col, pages):
    processor, model = col
    images = embed(model, processor.process_images(pages[:4]))
    queries = embed(model, processor.process_queries(["red page", "a much longer query about the blue page"]))
    want = brute_maxsim([real_rows(q) for q in queries], [real_rows(d) for d in images])
    torch.testing.assert_close(processor.score_multi_vector(queries, images), want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(processor.score(list(queries), list(images), device="cpu", batch_size=1), want,
                               atol=1e-4, rtol=1e-5)
    # padding never wins the max: a document whose every real token scores below zero keeps its (negative) score
    q = torch.nn.functional.normalize(torch.randn(1, 3, 8), dim=-1)
    d = [-q[0, :2], torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)]
    padded = torch.nn.utils.rnn.pad_sequence(d, batch_first=True)
    torch.testing.assert_close(processor.score_multi_vector(q, padded), brute_maxsim([q[0]], d), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="No passages"):
        processor.score_multi_vector(q, [])


def test_scores_agree_with_colpali_engine(colpali, col, pages, monkeypatch):
    monkeypatch.setenv("COLPALI_SCORES_BACKEND", "torch")  # its pure-torch MaxSim
    base = colpali.processing_utils.BaseVisualRetrieverProcessor
    processor, model = col
    images = [real_rows(d) for d in embed(model, processor.process_images(pages[:4]))]
    queries = [real_rows(q) for q in embed(model, processor.process_queries(["red page", "a longer blue query"]))]
    theirs = base.score_multi_vector(queries, images, device="cpu")
    torch.testing.assert_close(processor.score(queries, images), theirs, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(processor.score_multi_vector(queries, images, batch_size=3), theirs, atol=1e-4,
                               rtol=1e-5)


def test_retrieval_evaluation_flow(col, multi_embedder, pages):
    """The loop colpali-engine's evaluators run: DataLoader + processor collate, ``.to(device)``, unbind, score."""
    processor, model = col
    doc_loader = torch.utils.data.DataLoader(pages, batch_size=4, shuffle=False, collate_fn=processor.process_images)
    query_loader = torch.utils.data.DataLoader(["red page", "blue page", "a chart"], batch_size=2, shuffle=False,
                                               collate_fn=processor.process_queries)
    ds, qs = [], []
    for loader, out in ((doc_loader, ds), (query_loader, qs)):
        for batch in loader:
            out.extend(torch.unbind(embed(model, batch).to("cpu")))
    want = multi_embedder.score(multi_embedder.embed_queries(["red page", "blue page", "a chart"]),
                                multi_embedder.embed_documents(pages))
    torch.testing.assert_close(processor.score(qs, ds), want, atol=1e-4, rtol=1e-5)
    # every page, as a query, retrieves itself first
    assert processor.score(ds, ds).argmax(dim=1).tolist() == list(range(len(pages)))


# ------------------------------------------------------------------------------------------------ signatures
def _compatible(ours, theirs) -> list[str]:
    """What a caller of colpali-engine's signature could pass that ours would not take the same way."""
    ours, theirs = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
    problems = []
    for name, p in theirs.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        q = ours.get(name)
        if q is None or q.kind != p.kind or q.default != p.default:
            problems.append(f"{name}: theirs {p}, ours {q}")
    order = [n for n in ours if n in theirs]
    if order != [n for n in theirs if n in ours]:
        problems.append(f"parameter order {order}")
    extra = [n for n, q in ours.items() if n not in theirs and q.default is q.empty and q.kind != q.VAR_KEYWORD]
    return problems + [f"{n}: required here, unknown there" for n in extra]


def test_processor_has_colpali_engines_methods_and_signatures(colpali, col):
    base = colpali.processing_utils.BaseVisualRetrieverProcessor
    processor, _ = col
    assert base.__abstractmethods__ <= set(dir(ColEagleProcessor))
    for name in ("process_images", "process_texts", "process_queries", "score", "score_multi_vector",
                 "get_n_patches"):
        assert _compatible(getattr(ColEagleProcessor, name), getattr(base, name)) == [], name
    assert isinstance(inspect.getattr_static(ColEagleProcessor, "score_multi_vector"), staticmethod)

    class Checked(ColEagleProcessor, base):  # instantiable only if every abstract method is implemented
        pass

    checked = Checked(processor.embedder)
    # colpali-engine's own process_queries (prefix + text + suffix -> process_texts) gives our batches
    for suffix in ("", None):
        theirs = base.process_queries(checked, texts=["red page", "blue"], suffix=suffix)
        aug = processor.query_augmentation_token * 10 if suffix is None else ""
        ours = processor.process_queries(queries=["red page", "blue"], suffix=aug)
        assert torch.equal(theirs["input_ids"], ours["input_ids"])


# ------------------------------------------------------------------------------------------ similarity maps
def test_n_patches_and_masks(col, tiled, wide_page, pages):
    processor, model = tiled
    assert processor.get_n_patches(wide_page.size, spatial_merge_size=model.spatial_merge_size) == (32, 16)
    assert processor.get_n_patches((450, 900), patch_size=model.patch_size) == (16, 32)
    assert col[0].get_n_patches(wide_page.size) == (16, 16)  # one tile
    batch = processor.process_images([wide_page, pages[0]])
    assert batch["num_tiles"].tolist() == [3, 1]
    full, local = processor.get_image_mask(batch), processor.get_local_image_mask(batch)
    assert full.sum(1).tolist() == [3 * 256, 256] and local.sum(1).tolist() == [2 * 256, 256]
    assert not (local & ~full).any()
    # the thumbnail is the last tile: the last 256 image tokens of the wide page are dropped
    positions = full[0].nonzero().squeeze(1)
    assert local[0, positions[:512]].all() and not local[0, positions[512:]].any()


def test_similarity_map_puts_each_token_where_it_is_in_the_image(tiled, wide_page):
    """Tiles row-major, tokens row-major inside a tile (the pixel shuffle's order): synthetic vectors that name
    their own (x, y) must light up exactly there."""
    processor, _ = tiled
    batch = processor.process_images([wide_page])
    n_x, n_y = processor.get_n_patches(wide_page.size)
    side, cols = 16, n_x // 16
    local = processor.get_local_image_mask(batch)
    dim = n_x * n_y
    emb = torch.zeros(1, batch["input_ids"].shape[1], dim)
    slots = local[0].nonzero().squeeze(1)
    for k, pos in enumerate(slots.tolist()):
        tile, inner = divmod(k, side * side)
        y = (tile // cols) * side + inner // side
        x = (tile % cols) * side + inner % side
        emb[0, pos, y * n_x + x] = 1.0
    probes = [(0, 0), (31, 0), (5, 15), (20, 3)]
    query = torch.zeros(1, len(probes), dim)
    for i, (x, y) in enumerate(probes):
        query[0, i, y * n_x + x] = 1.0
    (maps,) = processor.get_similarity_maps_from_embeddings(emb, query, (n_x, n_y), local)
    assert maps.shape == (len(probes), n_x, n_y)
    for i, (x, y) in enumerate(probes):
        assert maps[i, x, y] == 1 and maps[i].sum() == 1
    with pytest.raises(ValueError, match="get_local_image_mask"):
        processor.get_similarity_maps_from_embeddings(emb, query, (n_x, n_y), processor.get_image_mask(batch))


def test_similarity_maps_agree_with_colpali_engine(colpali, col, tiled, wide_page, pages):
    maps_utils = colpali.similarity_map_utils
    # one tile: colpali-engine's generic function over get_image_mask
    processor, model = col
    batch = processor.process_images([pages[0]])
    images, query = embed(model, batch), embed(model, processor.process_queries(["red page"]))
    n_patches = processor.get_n_patches(pages[0].size, spatial_merge_size=model.spatial_merge_size)
    theirs = maps_utils.get_similarity_maps_from_embeddings(image_embeddings=images, query_embeddings=query,
                                                            n_patches=n_patches,
                                                            image_mask=processor.get_image_mask(batch))
    ours = processor.get_similarity_maps_from_embeddings(images, query, n_patches, processor.get_image_mask(batch))
    torch.testing.assert_close(ours[0], theirs[0])
    normalized = maps_utils.normalize_similarity_map(theirs[0])
    assert float(normalized.min()) >= 0 and float(normalized.max()) <= 1

    # several tiles: colpali-engine's split-image processors' method (Idefics3-style: sub-images, then global)
    processor, model = tiled
    batch = processor.process_images([wide_page])
    images, query = embed(model, batch), embed(model, processor.process_queries(["wide page"]))
    n_patches = processor.get_n_patches(wide_page.size)

    class SplitImageReference(colpali.processing_utils.Idefics3SplitImageInterpretabilityMixin):
        image_token = processor.image_token
        image_seq_len = processor.image_seq_len
        tokenizer = types.SimpleNamespace(convert_tokens_to_ids={processor.image_token: processor.image_token_id}.get)

    ref = SplitImageReference()
    assert torch.equal(ref.get_local_image_mask(batch), processor.get_local_image_mask(batch))
    theirs = ref.get_similarity_maps_from_embeddings(images, query, n_patches, ref.get_local_image_mask(batch))
    ours = processor.get_similarity_maps_from_embeddings(images, query, n_patches,
                                                         processor.get_local_image_mask(batch))
    assert ours[0].shape == (query.shape[1], 32, 16)
    torch.testing.assert_close(ours[0], theirs[0])


# ------------------------------------------------------------------------------------------------- loading
def test_processor_from_pretrained_batches_like_the_models(tiled, tiny_ckpt, wide_page):
    processor, model = tiled
    twin = ColEagleProcessor(model)
    a, b = processor.process_images([wide_page, (wide_page, "caption")]), twin.process_images([wide_page,
                                                                                               (wide_page, "caption")])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_errors_are_clear(col, single_embedder, tiny_ckpt, tiled, wide_page):
    processor, model = col
    with pytest.raises(ValueError, match="multi-vector embedder"):
        ColEagleProcessor(single_embedder)
    with pytest.raises(ValueError, match="multi-vector embedder"):
        ColEagleModel(single_embedder)
    with pytest.raises(ValueError, match="multi-vector"):
        ColEagleModel.from_pretrained(tiny_ckpt, mode="single")
    with pytest.raises(ValueError, match="one device"):
        ColEagleModel.from_pretrained(tiny_ckpt, device_map="auto")
    batch = processor.process_images([Image.new("RGB", (60, 60), "red")])
    with pytest.raises(TypeError, match="image_grid_thw"):
        model(**batch, image_grid_thw=torch.ones(1, 3))
    with pytest.raises(ValueError, match="num_tiles says 2"):
        model(**{**batch, "num_tiles": torch.tensor([2])})
    with pytest.raises(ValueError, match="patch_size=16 does not match"):
        processor.get_n_patches((60, 60), patch_size=16)
    with pytest.raises(ValueError, match="contexts is not supported"):
        processor.process_queries(["q"], contexts=["c"])
    with pytest.raises(ValueError, match="Only one of"):
        processor.process_queries(texts=["a"], queries=["b"])


@pytest.mark.gpu
def test_cuda_bf16_flow_matches_cpu(col, pages, tiny_ckpt):
    """colpali-engine's `.to(model.device)` on a CUDA bf16 model gives the CPU fp32 vectors (cosine > 0.98)."""
    processor, cpu = col
    gpu = ColEagleModel.from_pretrained(tiny_ckpt, torch_dtype=torch.bfloat16, device_map="cuda:0", max_tiles=1,
                                        projection_dim=32, bidirectional=True).eval()
    assert gpu.device.type == "cuda" and gpu.dtype == torch.bfloat16
    batch = processor.process_images(pages[:2])
    a, b = embed(cpu, batch), embed(gpu, batch).cpu()
    mask = batch["attention_mask"].bool()
    cos = torch.nn.functional.cosine_similarity(a[mask], b[mask].float(), dim=-1)
    assert float(cos.min()) > 0.98, cos
    torch.testing.assert_close(processor.score(list(b), list(b), device="cuda").diagonal(),
                               processor.score(list(b), list(b)).diagonal(), atol=1e-2, rtol=1e-3)
