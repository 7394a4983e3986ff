"""The email channel: IMAP in (aioimaplib, IDLE push), SMTP out (aiosmtplib), standard-library parsing."""
