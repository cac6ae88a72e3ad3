<?php
// Leaks MIB MiB in this worker for good: GET leak.php?mib=N answers its PID.
//
// The block is malloc()ed through FFI, outside Zend's allocator (which would
// free it at the end of the request), and memset() writes every byte, so every
// page is resident, private and charged to the worker's memory cgroup. It is
// never freed: the worker's USS grows by N MiB per request and stays grown
// until the worker exits (with pm.max_requests = 0 it is never recycled).
// Needs php_admin_value[ffi.enable] = 1 in the pool.
$mib = (int)($_GET["mib"] ?? 0);
$libc = FFI::cdef("void *malloc(size_t); void *memset(void *, int, size_t);", "libc.so.6");
$size = $mib << 20;
$block = $libc->malloc($size);
if (FFI::isNull($block)) {
    http_response_code(500);
    exit("malloc($size) failed\n");
}
$libc->memset($block, 1, $size);
echo getmypid();
