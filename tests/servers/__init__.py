"""Real servers the channel tests talk to: a private Dovecot (IMAP) and an aiosmtpd sink (SMTP)."""
