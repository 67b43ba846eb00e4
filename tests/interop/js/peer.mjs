// A standard js-libp2p 2.x peer (Noise, Yamux, GossipSub 1.1, identify, ping) for the interop test.
// It speaks none of the project's own protocols. Usage: node peer.mjs <multiaddr to dial> <topic>...
// stdout: JSON lines {"event": "ready"|"connected"|"gossip"|"published"|"error", ...};
// stdin: JSON lines {"cmd": "publish", "topic": ..., "data": "<hex>"}; exits when stdin closes.

// js-libp2p 2.10 calls Promise.withResolvers, which Node 20 lacks.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const { createLibp2p } = await import('libp2p')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { gossipsub } = await import('@chainsafe/libp2p-gossipsub')
const { tcp } = await import('@libp2p/tcp')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { multiaddr } = await import('@multiformats/multiaddr')
const readline = await import('node:readline')

const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n')
const [target, ...topics] = process.argv.slice(2)

// Message ids as py-libp2p (and go) make them: the author's peer-id bytes, then the 8-byte seqno.
const msgIdFn = (msg) => {
  if (msg.type !== 'signed') return new TextEncoder().encode('unsigned')
  const from = msg.from.toMultihash().bytes
  const seq = new Uint8Array(8)
  new DataView(seq.buffer).setBigUint64(0, msg.sequenceNumber)
  const id = new Uint8Array(from.length + 8)
  id.set(from, 0)
  id.set(seq, from.length)
  return id
}

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    pubsub: gossipsub({ allowPublishToZeroTopicPeers: true, emitSelf: false, msgIdFn, heartbeatInterval: 1000 })
  }
})
const toHex = (u8) => Buffer.from(u8).toString('hex')
node.services.pubsub.addEventListener('message', (evt) => {
  const m = evt.detail
  emit({ event: 'gossip', topic: m.topic, data: toHex(m.data), from: m.type === 'signed' ? m.from.toString() : null })
})
for (const t of topics) node.services.pubsub.subscribe(t)
emit({ event: 'ready', peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) })
try {
  await node.dial(multiaddr(target))
  emit({ event: 'connected', peers: node.getPeers().map(String) })
} catch (err) {
  emit({ event: 'error', where: 'dial', message: String(err) })
}
setInterval(() => emit({ event: 'peers', peers: node.getPeers().map(String),
  mesh: Object.fromEntries(topics.map((t) => [t, node.services.pubsub.getMeshPeers(t).length])) }), 1000)

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  try {
    const cmd = JSON.parse(line)
    if (cmd.cmd === 'publish') {
      const res = await node.services.pubsub.publish(cmd.topic, Buffer.from(cmd.data, 'hex'))
      emit({ event: 'published', topic: cmd.topic, recipients: res.recipients.length })
    }
  } catch (err) {
    emit({ event: 'error', where: 'publish', message: String(err) })
  }
})
rl.on('close', async () => { await node.stop(); process.exit(0) })
