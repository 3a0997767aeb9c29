"""Scoring: datasets of blurred/sharp pairs, PSNR/SSIM metrics and side-by-side evaluation."""
