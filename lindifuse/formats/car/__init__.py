"""CAR (Content Addressable aRchive) sources: framing, layouts, block verification."""
