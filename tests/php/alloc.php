<?php
// Holds MIB MiB for MS milliseconds, then answers its PID: GET alloc.php?mib=N&ms=T.
//
// str_repeat writes every byte, so the block is resident and charged to the
// worker's memory cgroup while it is held; many of these at once in a pool
// whose cgroup is smaller than their sum make an OOM storm (test_oom_storm.py).
$mib = (int)($_GET["mib"] ?? 8);
$held = str_repeat("x", $mib << 20);
usleep((int)($_GET["ms"] ?? 200) * 1000);
echo getmypid();
