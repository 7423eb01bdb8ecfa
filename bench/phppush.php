<?php
// M8 (bench/metrics.py): COUNT Gateway::sendToGroup(GROUP, message) calls as PHP's
// GatewayClient makes them with Gateway::$persistentConnection = true: for each call
// the ext data JSON and the GatewayProtocol packet are built, and written with
// stream_socket_sendto() on the persistent socket. Prints the seconds they took.
// Usage: php phppush.php ADDRESS GROUP COUNT

[$_, $address, $group, $count] = $argv;
$pad = str_repeat('x', 80);
$flags = STREAM_CLIENT_PERSISTENT | STREAM_CLIENT_CONNECT;
$started = microtime(true);
for ($i = 0; $i < (int)$count; $i++) {
    $ext = json_encode(['group' => [$group], 'exclude' => null]);
    $body = 'B' . sprintf('%019d', hrtime(true)) . $pad;
    $buffer = pack('NCNnNnNCnN', 28 + strlen($ext) + strlen($body), 22, 0, 0, 0, 0, 0, 1, 0,
        strlen($ext)) . $ext . $body;
    $client = stream_socket_client("tcp://$address", $errno, $error, 3, $flags);
    if (stream_socket_sendto($client, $buffer) !== strlen($buffer)) {
        fwrite(STDERR, "short write to $address\n");
        exit(1);
    }
}
echo microtime(true) - $started, "\n";
