// MQTT.js round trip for tests/test_websocket.py:
//   node roundtrip.js URL TOPIC PROTOCOL_VERSION [CA_FILE]
// connects to URL (ws:// or wss://), subscribes to TOPIC, publishes to it,
// waits for the message to come back and prints one JSON line, then exits 0.
// Any error prints {"error": ...} and exits 1; nothing within 10 s exits 2.
"use strict";
const fs = require("fs");
const mqtt = require("mqtt");

const [url, topic, version, caFile] = process.argv.slice(2);
const options = {
  clientId: "mqttjs-" + topic.replace(/\W/g, "-"),
  protocolVersion: Number(version),
  reconnectPeriod: 0,
  connectTimeout: 8000,
};
if (caFile) {
  options.ca = fs.readFileSync(caFile);
}
const done = (code, obj) => {
  process.stdout.write(JSON.stringify(obj) + "\n");
  process.exit(code);
};
setTimeout(() => done(2, { error: "timeout" }), 10000).unref();

const client = mqtt.connect(url, options);
client.on("error", (err) => done(1, { error: String(err && err.message) }));
client.on("connect", (connack) => {
  client.subscribe(topic, { qos: 1 }, (err, granted) => {
    if (err) {
      done(1, { error: "subscribe: " + err.message });
      return;
    }
    client.publish(topic, "hello from mqtt.js " + version, { qos: 1 });
  });
});
client.on("message", (t, payload) => {
  const result = {
    topic: t,
    payload: payload.toString(),
    protocolVersion: client.options.protocolVersion,
  };
  client.end(false, () => done(0, result));
});
