"""Image tree walking, robust decoding and metadata-free atomic writing (anonymize.io)."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import struct
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile, JpegImagePlugin
from PIL.PngImagePlugin import PngInfo

from anonymize.io import write as write_module
from anonymize.io.decode import ImageDecodeError, decode_image, sha256_file
from anonymize.io.metadata import metadata_beyond_icc, metadata_of
from anonymize.io.walk import IMAGE_EXTENSIONS, ImageFile as FoundImage, sniff_format, walk_images
from anonymize.io.write import atomic_write_bytes, encode_image, output_path_for, write_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PORTRAITS = SHARED / "data" / "portraits"

SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
XMP_PACKET = b'<?xpacket begin=""?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta><?xpacket end="w"?>'


# --- helpers -------------------------------------------------------------------------------------


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """A gradient: compresses well and survives lossy codecs nearly unchanged."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) * 255 // (width + height - 2)], axis=2).astype(np.uint8)


def save(image: Image.Image, path: Path, fmt: str | None = None, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **options)
    return path


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def exif_with_gps(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "SpyCam Inc."
    exif[0x013B] = "Jane Doe"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)}
    return exif


def relpaths(root: Path, exclude: Path | None = None) -> list[str]:
    return [str(found.relpath) for found in walk_images(root, exclude=exclude)]


def assert_one_line_error(error: pytest.ExceptionInfo[ImageDecodeError], name: str, cause: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{name}: ")
    assert cause in message


# --- walk ----------------------------------------------------------------------------------------


def test_image_extensions_are_the_supported_formats() -> None:
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def test_walk_yields_every_image_once_sorted_by_relpath(tmp_path: Path) -> None:
    for name in ["b.jpg", "a/z.png", "a-c.png", "a/b/c.webp", "A.PNG", "a.jpg", "a/b.tiff"]:
        save(Image.new("RGB", (4, 4)), tmp_path / name, "PNG")
    expected = ["A.PNG", "a/b/c.webp", "a/b.tiff", "a/z.png", "a-c.png", "a.jpg", "b.jpg"]
    found = list(walk_images(tmp_path))
    assert [str(item.relpath) for item in found] == expected
    assert [item.relpath for item in found] == sorted(item.relpath for item in found)
    assert relpaths(tmp_path) == expected  # deterministic
    assert all(item.path.is_absolute() and item.path == tmp_path / item.relpath for item in found)
    assert all(isinstance(item, FoundImage) and isinstance(item.relpath, PurePosixPath) for item in found)


def test_walk_skips_hidden_files_and_hidden_directories(tmp_path: Path) -> None:
    for name in ["keep.png", ".hidden.png", ".cache/inside.png", "sub/.thumb.jpg", "sub/ok.jpg"]:
        save(Image.new("RGB", (4, 4)), tmp_path / name, "PNG")
    assert relpaths(tmp_path) == ["keep.png", "sub/ok.jpg"]


def test_walk_follows_directory_symlinks_but_skips_symlink_loops(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    save(Image.new("RGB", (4, 4)), root / "a" / "x.png", "PNG")
    save(Image.new("RGB", (4, 4)), outside / "y.png", "PNG")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "a" / "self").symlink_to(root / "a", target_is_directory=True)
    (root / "linked").symlink_to(outside, target_is_directory=True)
    found = list(itertools.islice(walk_images(root), 100))  # bounded: a loop must not hang the test
    assert [str(item.relpath) for item in found] == ["a/x.png", "linked/y.png"]


def test_walk_never_enters_the_excluded_directory(tmp_path: Path) -> None:
    save(Image.new("RGB", (4, 4)), tmp_path / "in.png", "PNG")
    save(Image.new("RGB", (4, 4)), tmp_path / "out" / "in.png", "PNG")
    save(Image.new("RGB", (4, 4)), tmp_path / "out" / "deep" / "more.png", "PNG")
    (tmp_path / "alias").symlink_to(tmp_path / "out", target_is_directory=True)
    assert relpaths(tmp_path, exclude=tmp_path / "out") == ["in.png"]
    assert relpaths(tmp_path, exclude=tmp_path / "not-created-yet") == ["alias/deep/more.png", "alias/in.png", "in.png"]


def test_walk_yields_image_named_files_whatever_their_content_and_ignores_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("these are not pixels\n")
    (tmp_path / "empty.jpeg").write_bytes(b"")
    save(Image.fromarray(noise(16, 16)), tmp_path / "truncated.jpg", "JPEG")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "truncated.jpg").read_bytes()[:100])
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "labels.csv").write_text("a,b\n1,2\n")
    (tmp_path / "boxes.xml").write_text("<annotation/>")
    (tmp_path / "bmw.txt").write_text("BM" + "x" * 40)  # starts like a BMP, is not one
    assert relpaths(tmp_path) == ["empty.jpeg", "notes.jpg", "truncated.jpg"]


def test_images_are_recognised_by_content_not_only_by_name(tmp_path: Path) -> None:
    png_named_jpg = save(Image.new("RGB", (4, 4), (1, 2, 3)), tmp_path / "photo.jpg", "PNG")
    save(Image.new("RGB", (4, 4)), tmp_path / "scan_without_extension", "WEBP")
    save(Image.new("RGB", (4, 4)), tmp_path / "image.dat", "TIFF")
    save(Image.new("RGB", (4, 4)), tmp_path / "bitmap.bin", "BMP")
    assert sniff_format(png_named_jpg) == "PNG"
    assert decode_image(png_named_jpg).format == "PNG"
    assert relpaths(tmp_path) == ["bitmap.bin", "image.dat", "photo.jpg", "scan_without_extension"]
    assert [sniff_format(tmp_path / name) for name in ["bitmap.bin", "image.dat", "scan_without_extension"]] == ["BMP", "TIFF", "WEBP"]
    assert sniff_format(tmp_path / "missing.png") is None


# --- decode: modes ---------------------------------------------------------------------------------


def test_grayscale_decodes_to_equal_rgb_channels_and_is_marked_grayscale(tmp_path: Path) -> None:
    gray = noise(6, 5, channels=1)
    decoded = decode_image(save(Image.fromarray(gray), tmp_path / "g.png"))
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == (6, 5, 3)
    assert all(np.array_equal(decoded.rgb[..., c], gray) for c in range(3))
    assert decoded.grayscale and decoded.mode == "L" and decoded.alpha is None


def test_one_bit_image_decodes_to_black_and_white(tmp_path: Path) -> None:
    bits = np.zeros((4, 4), dtype=bool)
    bits[1, 2] = True
    decoded = decode_image(save(Image.fromarray(bits), tmp_path / "bits.png"))
    assert decoded.mode == "1" and decoded.grayscale
    assert decoded.rgb[1, 2].tolist() == [255, 255, 255] and decoded.rgb[0, 0].tolist() == [0, 0, 0]


def test_palette_image_decodes_to_its_colours(tmp_path: Path) -> None:
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    palette_image = Image.fromarray(indices, mode="L").convert("P")
    palette_image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    decoded = decode_image(save(palette_image, tmp_path / "p.png"))
    assert decoded.mode == "P" and not decoded.grayscale and decoded.alpha is None
    assert decoded.rgb.tolist() == [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 255, 0]]]


def test_palette_transparency_becomes_an_alpha_channel(tmp_path: Path) -> None:
    palette_image = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="L").convert("P")
    palette_image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    decoded = decode_image(save(palette_image, tmp_path / "pt.png", transparency=0))
    assert decoded.alpha is not None and decoded.alpha.tolist() == [[0, 255], [255, 0]]
    assert decoded.rgb[0, 1].tolist() == [200, 100, 50]


def test_cmyk_jpeg_decodes_to_rgb(tmp_path: Path) -> None:
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", "JPEG", quality=95)
    decoded = decode_image(path)
    assert decoded.mode == "CMYK" and decoded.rgb.shape == (16, 16, 3)
    assert np.abs(decoded.rgb.astype(int) - [255, 0, 0]).max() <= 3  # Adobe-inverted CMYK, read right


def test_sixteen_bit_gray_is_scaled_to_eight_bits_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 65535], [257 * 100, 1000]], dtype=np.uint16)
    decoded = decode_image(save(Image.fromarray(values), tmp_path / "deep.png"))
    assert decoded.mode == "I;16" and decoded.grayscale
    assert decoded.rgb[..., 0].tolist() == [[0, 255], [100, 4]]


def test_big_endian_sixteen_bit_tiff_is_scaled_to_eight_bits(tmp_path: Path) -> None:
    values = np.array([[0, 65535, 257 * 7]], dtype=">u2")
    image = Image.frombytes("I;16B", (3, 1), values.tobytes())
    decoded = decode_image(save(image, tmp_path / "deep.tif", "TIFF"))
    assert decoded.grayscale and decoded.rgb[..., 0].tolist() == [[0, 255, 7]]


def test_rgba_keeps_its_alpha_channel(tmp_path: Path) -> None:
    rgba = noise(5, 7, channels=4)
    decoded = decode_image(save(Image.fromarray(rgba), tmp_path / "rgba.png"))
    assert np.array_equal(decoded.rgb, rgba[..., :3]) and np.array_equal(decoded.alpha, rgba[..., 3])
    assert decoded.rgb.flags.writeable and decoded.alpha.flags.writeable


@pytest.mark.parametrize(("orientation", "top_colour"), [(6, (255, 0, 0)), (8, (0, 0, 255))])
def test_exif_orientation_is_applied_to_the_pixels(tmp_path: Path, orientation: int, top_colour: tuple) -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red
    stored[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(Image.fromarray(stored), tmp_path / "rotated.jpg", "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(path)
    assert decoded.rgb.shape == (40, 20, 3)  # 6 turns clockwise, 8 counter-clockwise: portrait
    assert np.abs(decoded.rgb[5, 10].astype(int) - top_colour).max() <= 8
    assert np.abs(decoded.rgb[34, 10].astype(int) - top_colour[::-1]).max() <= 8


# --- decode: errors -------------------------------------------------------------------------------


def test_zero_byte_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError) as error:
        decode_image(tmp_path / "empty.jpg", display_name="sub/empty.jpg")
    assert_one_line_error(error, "sub/empty.jpg", "empty file (0 bytes)")


def test_text_file_named_like_an_image_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("line one\nline two\n")
    with pytest.raises(ImageDecodeError) as error:
        decode_image(tmp_path / "notes.jpg")
    assert_one_line_error(error, str(tmp_path / "notes.jpg"), "not an image (text file)")


def test_truncated_jpeg_is_rejected_never_partially_decoded(tmp_path: Path) -> None:
    path = save(Image.fromarray(noise(64, 64)), tmp_path / "half.jpg", "JPEG", quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageDecodeError) as error:
        decode_image(path, display_name="half.jpg")
    assert_one_line_error(error, "half.jpg", "truncated JPEG")


def test_truncated_png_is_rejected(tmp_path: Path) -> None:
    path = save(Image.fromarray(noise(64, 64)), tmp_path / "half.png")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageDecodeError) as error:
        decode_image(path, display_name="half.png")
    assert_one_line_error(error, "half.png", "truncated PNG")


def test_truncation_is_detected_even_if_other_code_enabled_truncated_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.new("RGB", (8, 8)), tmp_path / "ok.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(path)


def test_decompression_bomb_is_refused_from_the_header_alone(tmp_path: Path) -> None:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + png_chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(bomb)
    assert len(bomb) < 100
    with pytest.raises(ImageDecodeError) as error:
        decode_image(tmp_path / "bomb.png", display_name="bomb.png")
    assert_one_line_error(
        error, "bomb.png", "image too large: 100000x100000 pixels exceeds the 178956970-pixel limit (decompression bomb?)"
    )


def test_pixel_limit_is_configurable(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (20, 10)), tmp_path / "small.png")
    with pytest.raises(ImageDecodeError, match="20x10 pixels exceeds the 199-pixel limit"):
        decode_image(path, max_pixels=199)
    assert decode_image(path, max_pixels=200).rgb.shape == (10, 20, 3)


def test_unsupported_formats_and_binary_junk_are_one_line_errors(tmp_path: Path) -> None:
    save(Image.new("RGB", (4, 4)), tmp_path / "anim.jpg", "GIF")
    (tmp_path / "junk.png").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "missing.png").unlink(missing_ok=True)
    for name, cause in [
        ("anim.jpg", "unsupported image format (GIF)"),
        ("junk.png", "not an image (unrecognised content)"),
        ("missing.png", "cannot read file"),
    ]:
        with pytest.raises(ImageDecodeError) as error:
            decode_image(tmp_path / name, display_name=name)
        assert_one_line_error(error, name, cause)


def test_multi_page_tiff_is_refused_rather_than_silently_cut_to_one_page(tmp_path: Path) -> None:
    pages = [Image.new("RGB", (4, 4), colour) for colour in ("red", "blue")]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(ImageDecodeError, match="multi-frame TIFF"):
        decode_image(path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damage it meets
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_corrupted_files_only_ever_raise_image_decode_error(tmp_path: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(noise(24, 24)).save(buffer, fmt)
    original = buffer.getvalue()
    rng = np.random.default_rng(7)
    path = tmp_path / "corrupt.img"
    for trial in range(40):
        data = bytearray(original)
        if trial % 4 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            for position in rng.integers(0, min(len(data), 96 if trial % 2 else len(data)), size=3):
                data[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            decoded = decode_image(path)
        except ImageDecodeError as error:
            assert "\n" not in str(error)
        else:
            assert decoded.rgb.dtype == np.uint8 and decoded.rgb.ndim == 3


def test_sha256_file_hashes_the_file_bytes(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc" * 1000)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(b"abc" * 1000).hexdigest()


# --- write: round trips --------------------------------------------------------------------------

ROUND_TRIPS = [
    # format, extension, source image mode, save options, lossless, written mode
    ("PNG", "png", "RGB", {}, True, "RGB"),
    ("PNG", "png", "RGBA", {}, True, "RGBA"),
    ("PNG", "png", "L", {}, True, "L"),
    ("PNG", "png", "LA", {}, True, "LA"),
    ("JPEG", "jpg", "RGB", {"quality": 95}, False, "RGB"),
    ("JPEG", "jpg", "L", {"quality": 95}, False, "L"),
    ("WEBP", "webp", "RGBA", {"lossless": True}, True, "RGBA"),
    ("WEBP", "webp", "RGB", {"quality": 90}, False, "RGB"),
    ("BMP", "bmp", "RGB", {}, True, "RGB"),
    ("BMP", "bmp", "L", {}, True, "L"),
    ("TIFF", "tif", "RGB", {}, True, "RGB"),
    ("TIFF", "tif", "RGBA", {}, True, "RGBA"),
    ("TIFF", "tif", "L", {}, True, "L"),
]


@pytest.mark.parametrize(("fmt", "ext", "mode", "options", "lossless", "written_mode"), ROUND_TRIPS)
def test_round_trip_keeps_format_pixels_alpha_and_grayscale(
    tmp_path: Path, fmt: str, ext: str, mode: str, options: dict, lossless: bool, written_mode: str
) -> None:
    pixels = noise(12, 16, channels=4) if lossless else np.dstack([smooth_rgb(32, 48), noise(32, 48, channels=1)])
    source = Image.fromarray(pixels[..., :3]).convert(mode) if "A" not in mode else Image.fromarray(pixels).convert(mode)
    decoded = decode_image(save(source, tmp_path / f"in.{ext}", fmt, **options))
    anonymized = 255 - decoded.rgb  # stands for the anonymizer's output: must be what gets written
    write_image(decoded, anonymized, tmp_path / "out" / f"in.{ext}")

    written = Image.open(tmp_path / "out" / f"in.{ext}")
    assert written.format == fmt and written.mode == written_mode
    again = decode_image(tmp_path / "out" / f"in.{ext}")
    assert again.grayscale == decoded.grayscale
    if lossless:
        assert np.array_equal(again.rgb, anonymized)
    else:
        assert np.abs(again.rgb.astype(int) - anonymized).mean() < 2.0
    if decoded.alpha is not None:
        assert np.array_equal(again.alpha, decoded.alpha)
    else:
        assert again.alpha is None


def test_webp_is_rewritten_lossless_only_when_the_source_was(tmp_path: Path) -> None:
    lossless = decode_image(save(Image.fromarray(noise(8, 8)), tmp_path / "a.webp", lossless=True))
    lossy = decode_image(save(Image.fromarray(noise(8, 8)), tmp_path / "b.webp", quality=80))
    assert lossless.webp_lossless and not lossy.webp_lossless
    assert b"VP8L" in encode_image(lossless, lossless.rgb)
    assert b"VP8 " in encode_image(lossy, lossy.rgb) and b"VP8L" not in encode_image(lossy, lossy.rgb)


def test_jpeg_quality_is_configurable_and_high_quality_keeps_full_chroma(tmp_path: Path) -> None:
    decoded = decode_image(save(Image.fromarray(noise(32, 32)), tmp_path / "n.jpg", quality=95))
    high, low = encode_image(decoded, decoded.rgb, jpeg_quality=95), encode_image(decoded, decoded.rgb, jpeg_quality=50)
    assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(high))) == 0  # 4:4:4
    assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(low))) == 2  # 4:2:0
    assert len(low) < len(high)
    with pytest.raises(ValueError, match="jpeg_quality"):
        encode_image(decoded, decoded.rgb, jpeg_quality=0)


def test_cmyk_and_palette_sources_are_written_back_as_rgb(tmp_path: Path) -> None:
    cmyk = decode_image(save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "c.jpg", "JPEG"))
    palette = decode_image(save(Image.new("RGB", (8, 8), (9, 99, 199)).convert("P"), tmp_path / "p.png"))
    write_image(cmyk, cmyk.rgb, tmp_path / "out" / "c.jpg")
    write_image(palette, palette.rgb, tmp_path / "out" / "p.png")
    assert Image.open(tmp_path / "out" / "c.jpg").mode == "RGB"
    assert Image.open(tmp_path / "out" / "p.png").mode == "RGB"
    assert np.array_equal(decode_image(tmp_path / "out" / "p.png").rgb, palette.rgb)


def test_encode_refuses_pixels_that_do_not_fit_the_source(tmp_path: Path) -> None:
    decoded = decode_image(save(Image.fromarray(noise(4, 6, channels=4)), tmp_path / "a.png"))
    with pytest.raises(ValueError, match="uint8"):
        encode_image(decoded, decoded.rgb.astype(np.float32))
    with pytest.raises(ValueError, match="alpha"):
        encode_image(decoded, np.zeros((5, 6, 3), dtype=np.uint8))


# --- write: metadata -----------------------------------------------------------------------------


def synthetic_files_with_metadata(directory: Path) -> list[Path]:
    """One file per format carrying EXIF with GPS, XMP, text/comments and an sRGB ICC profile."""
    image = Image.fromarray(smooth_rgb(24, 32))
    exif = exif_with_gps(orientation=6).tobytes()
    text = PngInfo()
    text.add_text("Author", "Jane Doe")
    text.add_text("Comment", "taken at home", zip=True)
    text.add_itxt("Description", "holiday")
    text.add_itxt("XML:com.adobe.xmp", XMP_PACKET.decode())
    tiff_tags = {315: "Jane Doe", 305: "Camera firmware", 270: "holiday", 274: 6, 700: XMP_PACKET, 33723: b"\x1c\x02\x05\x00\x04test"}
    tiff_tags[34853] = {1: "N", 2: (48.0, 51.0, 30.0)}
    return [
        save(image, directory / "a.jpg", "JPEG", exif=exif, xmp=XMP_PACKET, comment=b"secret", icc_profile=SRGB_PROFILE),
        save(image, directory / "b.png", "PNG", exif=exif, pnginfo=text, icc_profile=SRGB_PROFILE),
        save(image, directory / "c.webp", "WEBP", exif=exif, xmp=XMP_PACKET, icc_profile=SRGB_PROFILE),
        save(image, directory / "d.tif", "TIFF", tiffinfo=tiff_tags, icc_profile=SRGB_PROFILE),
    ]


def test_metadata_of_sees_exif_gps_xmp_text_comments_and_icc(tmp_path: Path) -> None:
    jpeg, png, webp, tiff = (metadata_of(path) for path in synthetic_files_with_metadata(tmp_path))
    for found in (jpeg, png, webp, tiff):
        assert found["exif"]["Orientation"] == 6 and found["gps"]["GPSLatitudeRef"] == "N"
        assert found["xmp"] and found["icc"] and not found["errors"]
    assert jpeg["jpeg_comments"] == ["secret"]
    assert {"Author", "Comment", "Description", "XML:com.adobe.xmp"} <= set(png["png_text"])
    assert tiff["iptc"] and tiff["exif"]["Artist"] == "Jane Doe" and "ImageWidth" not in tiff["exif"]


def test_written_files_keep_only_the_icc_profile(tmp_path: Path) -> None:
    for source in synthetic_files_with_metadata(tmp_path / "in"):
        assert {"exif", "gps", "xmp"} <= set(metadata_beyond_icc(metadata_of(source)))
        decoded = decode_image(source)
        dest = tmp_path / "out" / source.name
        write_image(decoded, decoded.rgb, dest)
        found = metadata_of(dest)
        assert metadata_beyond_icc(found) == [], (source.name, found)
        assert found["icc"] and not found["errors"]
        assert Image.open(dest).info.get("icc_profile") == SRGB_PROFILE
        assert decode_image(dest).rgb.shape == (32, 24, 3)  # rotated once, and not again on reading


def test_icc_profile_that_does_not_describe_the_pixels_is_dropped(tmp_path: Path) -> None:
    gray_with_rgb_profile = save(Image.new("L", (4, 4), 80), tmp_path / "g.png", icc_profile=SRGB_PROFILE)
    decoded = decode_image(gray_with_rgb_profile)
    assert decoded.icc_profile is None
    write_image(decoded, decoded.rgb, tmp_path / "out.png")
    assert not metadata_of(tmp_path / "out.png")["icc"]


def test_real_photos_lose_all_metadata_but_their_icc_profile(tmp_path: Path) -> None:
    if not PORTRAITS.is_dir():
        pytest.skip(f"real photos not available: {PORTRAITS} is absent (the shared data folder is not mounted)")
    carrying = {path: metadata_of(path) for path in sorted(PORTRAITS.iterdir()) if metadata_beyond_icc(metadata_of(path))}
    kinds = {kind for found in carrying.values() for kind in metadata_beyond_icc(found)}
    assert {"exif", "gps", "xmp", "iptc", "jpeg_comments", "png_text"} <= kinds  # the test is not vacuous
    for source, before in carrying.items():
        decoded = decode_image(source)
        dest = tmp_path / source.name
        write_image(decoded, decoded.rgb, dest)
        after = metadata_of(dest)
        assert metadata_beyond_icc(after) == [], (source.name, after)
        assert after["icc"] == before["icc"], source.name


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_metadata_of_never_raises_on_bad_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    save(Image.fromarray(noise(32, 32)), tmp_path / "cut.jpg", "JPEG", exif=exif_with_gps().tobytes())
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:60])
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR")
    (tmp_path / "cut.tif").write_bytes(b"II*\x00\xff\xff\x00\x00")
    for name in ["empty.jpg", "text.png", "cut.jpg", "cut.png", "cut.tif", "missing.webp"]:
        found = metadata_of(tmp_path / name)
        assert isinstance(found, dict) and "exif" in found
    assert metadata_of(tmp_path / "missing.webp")["errors"]
    assert metadata_of(tmp_path / "cut.png")["errors"]


def test_multi_picture_jpeg_is_written_as_its_primary_picture_only(tmp_path: Path) -> None:
    primary, preview = Image.new("RGB", (16, 16), (250, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 250))
    primary.save(tmp_path / "camera.jpg", "MPO", save_all=True, append_images=[preview])
    assert metadata_of(tmp_path / "camera.jpg")["trailing_bytes"] > 0  # the second picture follows the first
    decoded = decode_image(tmp_path / "camera.jpg")
    assert decoded.format == "JPEG" and decoded.rgb.shape == (16, 16, 3)
    write_image(decoded, decoded.rgb, tmp_path / "out.jpg")
    assert metadata_beyond_icc(metadata_of(tmp_path / "out.jpg")) == []


def test_metadata_of_flags_data_appended_after_the_image(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (8, 8)), tmp_path / "a.jpg", "JPEG")
    path.write_bytes(path.read_bytes() + b"hidden payload")
    assert metadata_of(path)["trailing_bytes"] == len(b"hidden payload")
    assert "trailing_bytes" in metadata_beyond_icc(metadata_of(path))


# --- write: atomicity ----------------------------------------------------------------------------


def test_output_path_mirrors_the_relative_path_and_refuses_escapes(tmp_path: Path) -> None:
    assert output_path_for(tmp_path, PurePosixPath("a/b/c.jpg")) == tmp_path / "a" / "b" / "c.jpg"
    for bad in ["../c.jpg", "/etc/c.jpg", "a/../../c.jpg"]:
        with pytest.raises(ValueError):
            output_path_for(tmp_path, PurePosixPath(bad))


def test_write_creates_parent_directories_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    decoded = decode_image(save(Image.new("RGB", (4, 4)), tmp_path / "a.png"))
    dest = tmp_path / "out" / "x" / "y" / "a.png"
    write_image(decoded, decoded.rgb, dest)
    assert os.listdir(dest.parent) == ["a.png"]
    assert oct(dest.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_failed_encoding_leaves_the_existing_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = decode_image(save(Image.new("RGB", (4, 4)), tmp_path / "a.png"))
    dest = tmp_path / "out" / "a.png"
    atomic_write_bytes(dest, b"previous result")

    def failing_encode(*args: object, **kwargs: object) -> bytes:
        raise OSError("encoder crashed")

    monkeypatch.setattr(write_module, "encode_image", failing_encode)
    with pytest.raises(OSError, match="encoder crashed"):
        write_image(decoded, decoded.rgb, dest)
    assert dest.read_bytes() == b"previous result"
    assert os.listdir(dest.parent) == ["a.png"]


def test_failed_rename_removes_the_temporary_file_and_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"old")
    dest.chmod(0o640)

    def failing_replace(source: object, target: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(write_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(dest, b"new")
    monkeypatch.undo()
    assert dest.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]
    atomic_write_bytes(dest, b"new")
    assert dest.read_bytes() == b"new" and dest.stat().st_mode & 0o777 == 0o640  # permissions kept


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def test_temporary_names_stay_short_whatever_the_name_and_are_recognised_as_ours() -> None:
    for name in ["a.png", "n" * 250 + ".png", "é" * 120 + ".jpg"]:
        temporary = write_module.temporary_name(name)
        assert len(os.fsencode(temporary)) <= 64 and temporary.startswith(".")
        assert write_module.TEMPORARY_NAME.match(temporary)
    assert not write_module.TEMPORARY_NAME.match("photo.tmp") and not write_module.TEMPORARY_NAME.match(".hidden.png")


def test_a_write_under_a_root_never_passes_through_a_linked_folder(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    root.mkdir()
    (root / "sub").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(write_module.UnsafeOutputPath, match="symbolic link"):
        atomic_write_bytes(root / "sub" / "deeper" / "a.bin", b"data", root=root)
    assert list(elsewhere.iterdir()) == []
    atomic_write_bytes(root / "real" / "a.bin", b"data", root=root)
    assert (root / "real" / "a.bin").read_bytes() == b"data"


def test_walk_tree_marks_every_entry_it_meets(tmp_path: Path) -> None:
    from anonymize.io.walk import walk_tree

    save(Image.new("RGB", (4, 4)), tmp_path / "a.png", "PNG")
    (tmp_path / "labels.csv").write_text("x")
    (tmp_path / ".hidden").mkdir()
    save(Image.new("RGB", (4, 4)), tmp_path / ".hidden" / "inside.png", "PNG")
    (tmp_path / "again").symlink_to(tmp_path, target_is_directory=True)
    kinds = {str(entry.relpath): (entry.kind, entry.reason) for entry in walk_tree(tmp_path)}
    assert kinds == {
        ".hidden": ("skipped", "hidden (not read)"),
        "a.png": ("image", ""),
        "again": ("skipped", "link to a folder already walked"),
        "labels.csv": ("other", "not an image"),
    }
