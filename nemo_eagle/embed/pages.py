"""Pages to index: every image file under a folder, and every page of every PDF (rendered with pypdfium2).

Each page has a stable key (its path relative to the folder, plus ``#page=N`` for PDFs), so indexing the same
folder again finds what is already stored and resumes without duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
PDF_EXTENSION = ".pdf"


@dataclass(frozen=True)
class Page:
    key: str  # "sub/dir/file.png" or "report.pdf#page=3" (posix, relative to the indexed folder)
    source: Path  # the file on disk
    page: int | None = None  # 1-based PDF page number; None for image files

    def payload(self) -> dict:
        return {"key": self.key, "source": str(self.source), "page": self.page}


def _pdfium():
    try:
        import pypdfium2
    except ImportError as e:
        raise ImportError("PDF pages need pypdfium2: pip install 'nemo-eagle[retrieval]' (or pypdfium2)") from e
    return pypdfium2


def pdf_page_count(path: Path) -> int:
    pdfium = _pdfium()
    try:
        doc = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as e:
        raise ValueError(f"{path}: not a readable PDF ({e})") from e
    try:
        return len(doc)
    finally:
        doc.close()


def discover_pages(root: str | Path, *, bad: list[tuple[Path, str]] | None = None) -> list[Page]:
    """All pages under ``root`` (a folder, or a single image / PDF file), in a stable sorted order.

    An unreadable PDF raises a ValueError naming it, or, when ``bad`` is a list, is appended to it as
    ``(path, reason)`` and skipped.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"input {root} does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    base = root.parent if root.is_file() else root
    pages: list[Page] = []
    for f in files:
        ext = f.suffix.lower()
        rel = f.relative_to(base).as_posix()
        if ext in IMAGE_EXTENSIONS:
            pages.append(Page(rel, f.resolve()))
        elif ext == PDF_EXTENSION:
            try:
                count = pdf_page_count(f)
            except ValueError as e:
                if bad is None:
                    raise
                bad.append((f, str(e)))
                continue
            pages += [Page(f"{rel}#page={n}", f.resolve(), n) for n in range(1, count + 1)]
    if root.is_file() and not pages:
        raise ValueError(f"{root} is neither an image ({', '.join(sorted(IMAGE_EXTENSIONS))}) nor a PDF")
    return pages


def load_page(page: Page, *, dpi: float = 144.0) -> Image.Image:
    """The page as a PIL image (a PDF page is rendered at ``dpi``)."""
    if not page.source.exists():
        raise FileNotFoundError(f"page source {page.source} no longer exists (key {page.key})")
    if page.page is None:
        with Image.open(page.source) as img:
            img.load()
            return img.copy()
    pdfium = _pdfium()
    doc = pdfium.PdfDocument(str(page.source))
    try:
        if not 1 <= page.page <= len(doc):
            raise ValueError(f"{page.source} has {len(doc)} pages, no page {page.page}")
        return doc[page.page - 1].render(scale=dpi / 72.0).to_pil().convert("RGB")
    finally:
        doc.close()
