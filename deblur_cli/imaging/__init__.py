"""Photo files: decoding and encoding every supported format with EXIF, ICC, alpha and 16 bits kept."""
