"""What is wrong with a run: findings, scans of segments and streams, verification."""
