"""SMS through Kavenegar."""
