<?php
// One crawler request of a known size: GET alloc.php?mib=N&ms=M holds N MiB
// (str_repeat writes every byte: every page resident and private; above
// Zend's 2 MiB chunk, a block mapped on its own and unmapped at the end) for
// M milliseconds, then answers N. tests/test_capacity_acid.py and
// tests/test_oom_storm.py pick N.
$mib = max(0, min(256, (int)($_GET["mib"] ?? 0)));
$ms = max(0, min(5000, (int)($_GET["ms"] ?? 0)));
$held = str_repeat("x", $mib << 20);
usleep($ms * 1000);
echo strlen($held) >> 20;
