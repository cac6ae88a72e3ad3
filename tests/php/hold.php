<?php
// Holds MIB MiB in this worker until the test releases it.
//
// GET hold.php?mib=N&dir=DIR: writes N MiB (str_repeat writes every byte, so
// every page is resident and private), announces itself by creating
// DIR/held-PID, then waits until DIR/release exists (30 s at most, so a test
// that died cannot pin the worker for good) and answers its PID.
//
// The memory is held rather than left behind: PHP frees a request's memory at
// its end, and what Zend's allocator keeps cached afterwards depends on the
// worker's history. A block above 2 MiB is mapped on its own (a "huge" block)
// and unmapped when freed, so while held it adds exactly N MiB to the
// worker's USS.
$mib = (int)($_GET["mib"] ?? 0);
$dir = (string)($_GET["dir"] ?? "");
if ($dir === "" || !is_dir($dir)) {
    http_response_code(400);
    exit("dir must be an existing directory\n");
}
$held = str_repeat("x", $mib << 20);
file_put_contents("$dir/held-" . getmypid(), (string)strlen($held));
$deadline = microtime(true) + 30;
while (!file_exists("$dir/release") && microtime(true) < $deadline) {
    usleep(10000);
}
echo getmypid();
