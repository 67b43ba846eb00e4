# pragma version 0.4.3
# pragma evm-version prague
# pragma optimize codesize
# pragma experimental-codegen
"""
@title pol settlement
@notice Stake, escrow, bonds, certificates and slashing of the pol network (SPEC.md §16.7).
        The rules are those of protocol/ledger.py; where the chain forces a difference, the
        model follows the contract and SPEC.md says so. BLS12-381 through the EIP-2537
        precompiles; every signed message is hashed to G2 here, never accepted pre-hashed.
"""

# ---------------------------------------------------------------------------------------------
# constants

BPS: constant(uint256) = 10000
MAX_VERIFIERS: constant(uint256) = 256  # the signer set of a certificate is one uint256 bitmap
MAX_PATH: constant(uint256) = 64
MAX_INPUT: constant(uint256) = 1024  # ABI bound of byte inputs; exact lengths are checked with a reason
MAX_CHECKPOINTS: constant(uint256) = 100000

SUBJECT_CLAIM: constant(uint8) = 0
SUBJECT_DISPUTE: constant(uint8) = 1
VERDICT_REJECT: constant(uint8) = 0
VERDICT_ACCEPT: constant(uint8) = 1

TASK_NONE: constant(uint8) = 0
TASK_OPEN: constant(uint8) = 1
TASK_CLAIMED: constant(uint8) = 2
TASK_PAID: constant(uint8) = 3
TASK_REFUNDED: constant(uint8) = 4

CLAIM_NONE: constant(uint8) = 0
CLAIM_PENDING: constant(uint8) = 1
CLAIM_ACCEPTED: constant(uint8) = 2
CLAIM_PAID: constant(uint8) = 3
CLAIM_SLASHED: constant(uint8) = 4
CLAIM_VOID: constant(uint8) = 5

DISPUTE_NONE: constant(uint8) = 0
DISPUTE_OPEN: constant(uint8) = 1
DISPUTE_UPHELD: constant(uint8) = 2
DISPUTE_FAILED: constant(uint8) = 3
DISPUTE_EXPIRED: constant(uint8) = 4
DISPUTE_MOOT: constant(uint8) = 5

DST_SIG: constant(Bytes[43]) = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
DST_POP: constant(Bytes[43]) = b"BLS_POP_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
DOMAIN_VOTE: constant(Bytes[11]) = b"pol/v1/vote"
DOMAIN_DISPUTE_VOTE: constant(Bytes[19]) = b"pol/v1/dispute-vote"
DOMAIN_DISPUTE_ID: constant(Bytes[17]) = b"pol/v1/dispute-id"
DOMAIN_EVIDENCE: constant(Bytes[15]) = b"pol/v1/evidence"
DOMAIN_CLAIM_BIND: constant(Bytes[17]) = b"pol/v1/claim-bind"

# p, the BLS12-381 base field modulus, in the precompiles' 64-byte encoding
FIELD_P: constant(Bytes[64]) = x"000000000000000000000000000000001a0111ea397fe69a4b1ba7b6434bacd764774b84f38512bf6730d2a0f6b0f6241eabfffeb153ffffb9feffffffffaaab"
# (p - 1) / 2 as two words: hi 16 bytes, lo 32 bytes; y above it is "lexicographically largest"
HALF_P_HI: constant(uint256) = 17282741772707453034394598013407712875
HALF_P_LO: constant(uint256) = 80617075055843030690312053732876818007934237714091801549733396136033114903893
# -G1 (the negated generator), for pairing checks e(pk, H) * e(-G1, sig) == 1
NEG_G1: constant(Bytes[128]) = x"0000000000000000000000000000000017f1d3a73197d7942695638c4fa9ac0fc3688c4f9774b905a14e3a3f171bac586c55e83ff97a1aeffb3af00adb22c6bb00000000000000000000000000000000114d1d6855d545a8aa7d76c8cf2e21f267816aef1db507c96655b9d5caac42364e6f38ba0ecb751bad54dcd6b939c2ca"
ZERO_G2_HASH: constant(bytes32) = keccak256(x"00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000")
P_HI: constant(uint256) = 34565483545414906068789196026815425751
P_LO: constant(uint256) = 45442060874369865957053122457065728162598490762543039060009208264153100167851
MASK128: constant(uint256) = 2**128 - 1
FLAGS_MASK: constant(uint256) = 224 << 120

G1ADD: constant(address) = 0x000000000000000000000000000000000000000b
G1MSM: constant(address) = 0x000000000000000000000000000000000000000C
G2ADD: constant(address) = 0x000000000000000000000000000000000000000d
PAIRING: constant(address) = 0x000000000000000000000000000000000000000F
MAP_FP2_TO_G2: constant(address) = 0x0000000000000000000000000000000000000011
MODEXP: constant(address) = 0x0000000000000000000000000000000000000005

# ---------------------------------------------------------------------------------------------
# storage

struct Verifier:
    account: address  # receives this verifier's challenger rewards and its stake on exit
    stake: uint256  # slashable until withdrawn
    exit_at: uint256  # 0 while active; else the time the stake may be withdrawn
    withdrawn: bool

struct Task:
    requester: address
    reward: uint256
    escrow: uint256  # reward while held, 0 once paid or refunded
    expires_at: uint256
    num_checkpoints: uint256
    status: uint8
    claim_id: bytes32

struct Claim:
    task_id: bytes32
    prover: address
    commitment: bytes32
    num_checkpoints: uint256
    bond: uint256  # locked while undecided, 0 afterwards
    registered_at: uint256
    certified_at: uint256  # 0 until an accept certificate
    status: uint8
    open_disputes: uint256

struct Dispute:
    claim_id: bytes32
    segment: uint256
    challenger: uint256  # verifier index
    claimed_root: bytes32
    replayed_root: bytes32
    opened_at: uint256
    status: uint8  # DISPUTE_OPEN while the claim is unsettled; see dispute_status() for moot

challenge_window: public(immutable(uint256))
availability_window: public(immutable(uint256))
dispute_window: public(immutable(uint256))
unbonding_delay: public(immutable(uint256))
quorum_numerator: public(immutable(uint256))
quorum_denominator: public(immutable(uint256))
prover_bond: public(immutable(uint256))
min_stake: public(immutable(uint256))
slash_double_vote_bps: public(immutable(uint256))
slash_failed_challenge_bps: public(immutable(uint256))
challenger_reward_bps: public(immutable(uint256))
slash_unavailable_bps: public(immutable(uint256))
bond_reward_bps: public(immutable(uint256))  # a claim's bond is max(prover_bond, reward * this / BPS)

verifiers: public(HashMap[uint256, Verifier])
verifier_key: HashMap[uint256, Bytes[128]]  # uncompressed G1 point (EIP-2537 encoding)
verifier_pubkey: public(HashMap[uint256, Bytes[48]])  # compressed, as protocol/bls.py writes it
verifier_count: public(uint256)
index_of_pubkey: public(HashMap[bytes32, uint256])  # keccak(compressed key) -> index + 1
index_of_account: public(HashMap[address, uint256])  # account -> index + 1
registry_leaf: HashMap[uint256, bytes32]  # keccak(point || active stake)
registry_hash: public(bytes32)  # fold of the leaves; certificates pass the registry against it
total_stake: public(uint256)  # active stake (the quorum's denominator)
apk_all: public(Bytes[128])  # sum of the keys with active stake: certificates subtract the non-signers

balances: public(HashMap[address, uint256])
burned: public(uint256)
tasks: public(HashMap[bytes32, Task])
claims: public(HashMap[bytes32, Claim])
disputes: public(HashMap[bytes32, Dispute])
double_vote_slashed: public(HashMap[bytes32, bool])  # keccak(index, kind, subject)

# ---------------------------------------------------------------------------------------------
# events: one per state change

event Deposited:
    account: indexed(address)
    amount: uint256

event Withdrawn:
    account: indexed(address)
    amount: uint256

event VerifierRegistered:
    index: indexed(uint256)
    account: indexed(address)
    pubkey: Bytes[48]
    stake: uint256

event UnbondingStarted:
    index: indexed(uint256)
    exit_at: uint256

event StakeWithdrawn:
    index: indexed(uint256)
    account: indexed(address)
    amount: uint256

event TaskPosted:
    task_id: indexed(bytes32)
    requester: indexed(address)
    reward: uint256
    expires_at: uint256
    num_checkpoints: uint256

event TaskRefunded:
    task_id: indexed(bytes32)
    requester: indexed(address)
    amount: uint256

event ClaimRegistered:
    claim_id: indexed(bytes32)
    task_id: indexed(bytes32)
    prover: indexed(address)
    prover_pubkey: Bytes[48]
    commitment: bytes32
    num_checkpoints: uint256
    bond: uint256

event ClaimAccepted:
    claim_id: indexed(bytes32)
    signers: uint256
    signed_stake: uint256

event ClaimPaid:
    claim_id: indexed(bytes32)
    prover: indexed(address)
    reward: uint256
    bond: uint256

event ClaimVoided:
    claim_id: indexed(bytes32)
    refund: uint256
    bond_returned: uint256
    bond_burned: uint256

event DisputeOpened:
    dispute_id: indexed(bytes32)
    claim_id: indexed(bytes32)
    challenger: indexed(uint256)
    segment: uint256
    claimed_root: bytes32
    replayed_root: bytes32

event DisputeUpheld:
    dispute_id: indexed(bytes32)
    claim_id: indexed(bytes32)
    challenger_reward: uint256
    bond_burned: uint256
    refund: uint256

event DisputeFailed:
    dispute_id: indexed(bytes32)
    challenger: indexed(uint256)
    stake_burned: uint256

event DisputeExpired:
    dispute_id: indexed(bytes32)
    claim_id: indexed(bytes32)

event DoubleVoteSlashed:
    verifier: indexed(uint256)
    kind: uint8
    subject: bytes32
    stake_burned: uint256

# ---------------------------------------------------------------------------------------------
# construction


@deploy
def __init__(
    _challenge_window: uint256,
    _availability_window: uint256,
    _dispute_window: uint256,
    _unbonding_delay: uint256,
    _quorum_numerator: uint256,
    _quorum_denominator: uint256,
    _prover_bond: uint256,
    _min_stake: uint256,
    _slash_double_vote_bps: uint256,
    _slash_failed_challenge_bps: uint256,
    _challenger_reward_bps: uint256,
    _slash_unavailable_bps: uint256,
    _bond_reward_bps: uint256,
):
    assert _quorum_denominator > 0 and _quorum_numerator <= _quorum_denominator, "bad quorum"
    assert 2 * _quorum_numerator > _quorum_denominator, "quorum must exceed one half"
    assert _slash_double_vote_bps <= BPS and _slash_failed_challenge_bps <= BPS, "bps above 10000"
    assert _challenger_reward_bps <= BPS and _slash_unavailable_bps <= BPS, "bps above 10000"
    assert _min_stake > 0, "min stake must be positive"
    # a stake must stay slashable for any dispute its verifier opened or vote it signed
    assert _unbonding_delay >= _availability_window + _challenge_window + _dispute_window, \
        "unbonding delay shorter than a claim's life"
    challenge_window = _challenge_window
    self.apk_all = concat(empty(bytes32), empty(bytes32), empty(bytes32), empty(bytes32))
    availability_window = _availability_window
    dispute_window = _dispute_window
    unbonding_delay = _unbonding_delay
    quorum_numerator = _quorum_numerator
    quorum_denominator = _quorum_denominator
    prover_bond = _prover_bond
    min_stake = _min_stake
    slash_double_vote_bps = _slash_double_vote_bps
    slash_failed_challenge_bps = _slash_failed_challenge_bps
    challenger_reward_bps = _challenger_reward_bps
    slash_unavailable_bps = _slash_unavailable_bps
    bond_reward_bps = _bond_reward_bps


# ---------------------------------------------------------------------------------------------
# BLS12-381 helpers (EIP-2537)


@internal
@view
def _mod_p(wide: Bytes[64]) -> Bytes[64]:
    # MODEXP(wide, 1, p): a 512-bit integer reduced mod p, already in the 64-byte Fp encoding
    data: Bytes[225] = concat(convert(64, bytes32), convert(1, bytes32), convert(64, bytes32), wide, b"\x01", FIELD_P)
    ok: bool = False
    out: Bytes[64] = b""
    ok, out = raw_call(MODEXP, data, max_outsize=64, is_static_call=True, revert_on_failure=False)
    assert ok and len(out) == 64, "modexp failed"
    return out


@internal
@view
def _hash_to_g2(message: Bytes[256], dst: Bytes[43]) -> Bytes[256]:
    # RFC 9380 hash_to_curve for BLS12381G2_XMD:SHA-256_SSWU_RO_: expand_message_xmd to 256 bytes,
    # four field elements mod p, map each Fp2 element to G2 (the precompile clears the cofactor), add.
    dst_prime: Bytes[44] = concat(dst, b"\x2b")
    b0: bytes32 = sha256(concat(empty(bytes32), empty(bytes32), message, b"\x01\x00\x00", dst_prime))
    u: bytes32[8] = empty(bytes32[8])
    u[0] = sha256(concat(b0, b"\x01", dst_prime))
    for i: uint256 in range(1, 8):
        u[i] = sha256(concat(convert(convert(b0, uint256) ^ convert(u[i - 1], uint256), bytes32),
                             slice(convert(i + 1, bytes32), 31, 1), dst_prime))
    u0: Bytes[128] = concat(self._mod_p(concat(u[0], u[1])), self._mod_p(concat(u[2], u[3])))
    u1: Bytes[128] = concat(self._mod_p(concat(u[4], u[5])), self._mod_p(concat(u[6], u[7])))
    ok: bool = False
    q0: Bytes[256] = b""
    q1: Bytes[256] = b""
    ok, q0 = raw_call(MAP_FP2_TO_G2, u0, max_outsize=256, is_static_call=True, revert_on_failure=False)
    assert ok and len(q0) == 256, "no EIP-2537 map-to-G2 on this chain"
    ok, q1 = raw_call(MAP_FP2_TO_G2, u1, max_outsize=256, is_static_call=True, revert_on_failure=False)
    assert ok and len(q1) == 256, "no EIP-2537 map-to-G2 on this chain"
    return self._g2_add(q0, q1)


@internal
@view
def _g1_add(a: Bytes[128], b: Bytes[128]) -> Bytes[128]:
    ok: bool = False
    out: Bytes[128] = b""
    ok, out = raw_call(G1ADD, concat(a, b), max_outsize=128, is_static_call=True, revert_on_failure=False)
    assert ok and len(out) == 128, "G1 point is not on the curve"
    return out


@internal
@view
def _g2_add(a: Bytes[256], b: Bytes[256]) -> Bytes[256]:
    ok: bool = False
    out: Bytes[256] = b""
    ok, out = raw_call(G2ADD, concat(a, b), max_outsize=256, is_static_call=True, revert_on_failure=False)
    assert ok and len(out) == 256, "signature is not a G2 point on the curve"
    return out


@internal
@view
def _g2(sig: Bytes[MAX_INPUT]) -> Bytes[256]:
    assert len(sig) == 256, "signature must be 256 bytes (G2)"
    return slice(sig, 0, 256)


@internal
@view
def _check_signature_point(sig: Bytes[256]):
    assert keccak256(sig) != ZERO_G2_HASH, "signature is the point at infinity"
    self._g2_add(sig, concat(concat(empty(bytes32), empty(bytes32), empty(bytes32), empty(bytes32)), concat(empty(bytes32), empty(bytes32), empty(bytes32), empty(bytes32))))  # on-curve check; the pairing checks the subgroup


@internal
@pure
def _g1_neg(point: Bytes[128]) -> Bytes[128]:
    # (x, p - y); the encoding of infinity (all zero) is its own negation
    y_hi: uint256 = extract32(point, 64, output_type=uint256)
    y_lo: uint256 = extract32(point, 96, output_type=uint256)
    if y_hi == 0 and y_lo == 0:
        return point
    borrow: uint256 = 0
    if y_lo > P_LO:
        borrow = 1
    return concat(slice(point, 0, 64), convert(P_HI - y_hi - borrow, bytes32), convert(unsafe_sub(P_LO, y_lo), bytes32))


@internal
@view
def _pairing_ok(pk: Bytes[128], h: Bytes[256], sig: Bytes[256]) -> bool:
    # e(pk, H(m)) == e(G1, sig)  <=>  e(pk, H(m)) * e(-G1, sig) == 1
    ok: bool = False
    out: Bytes[32] = b""
    ok, out = raw_call(PAIRING, concat(pk, h, NEG_G1, sig), max_outsize=32, is_static_call=True,
                       revert_on_failure=False)
    # keys were checked at registration and H comes from the map: only the signature can fail here
    assert ok and len(out) == 32, "signature is not in the G2 subgroup"
    return convert(out, uint256) == 1


@internal
@view
def _is_infinity_g1(point: Bytes[128]) -> bool:
    return point == concat(empty(bytes32), empty(bytes32), empty(bytes32), empty(bytes32))


@internal
@view
def _check_pubkey(pubkey: Bytes[MAX_INPUT], point: Bytes[MAX_INPUT]) -> Bytes[48]:
    """The compressed key (protocol/bls.py's form) and the uncompressed point are one valid key."""
    assert len(pubkey) == 48, "public key must be 48 bytes"
    assert len(point) == 128, "public key point must be 128 bytes"
    c_hi: uint256 = convert(slice(pubkey, 0, 16), uint256)
    c_lo: uint256 = extract32(pubkey, 16, output_type=uint256)
    flags: uint256 = c_hi >> 120
    assert flags & 64 == 0, "public key is the point at infinity"
    assert flags & 128 != 0, "public key is not in compressed form"
    assert point != concat(empty(bytes32), empty(bytes32), empty(bytes32), empty(bytes32)), "public key is the point at infinity"
    x_hi: uint256 = extract32(point, 0, output_type=uint256)
    x_lo: uint256 = extract32(point, 32, output_type=uint256)
    y_hi: uint256 = extract32(point, 64, output_type=uint256)
    y_lo: uint256 = extract32(point, 96, output_type=uint256)
    assert x_hi <= MASK128 and y_hi <= MASK128, "public key point has nonzero padding"
    assert c_hi & ~FLAGS_MASK == x_hi and c_lo == x_lo, "public key point does not match the key"
    y_large: bool = y_hi > HALF_P_HI or (y_hi == HALF_P_HI and y_lo > HALF_P_LO)
    assert (flags & 32 != 0) == y_large, "public key point has the wrong sign"
    self._g1_add(slice(point, 0, 128), concat(empty(bytes32), empty(bytes32), empty(bytes32), empty(bytes32)))  # reverts "not on the curve"
    ok: bool = False
    out: Bytes[128] = b""
    ok, out = raw_call(G1MSM, concat(slice(point, 0, 128), convert(1, bytes32)), max_outsize=128, is_static_call=True,
                       revert_on_failure=False)
    assert ok and len(out) == 128, "public key is not in the G1 subgroup"
    return slice(pubkey, 0, 48)


@internal
@view
def _verify(point: Bytes[128], message: Bytes[256], sig: Bytes[256], dst: Bytes[43]) -> bool:
    self._check_signature_point(sig)
    return self._pairing_ok(point, self._hash_to_g2(message, dst), sig)


# ---------------------------------------------------------------------------------------------
# registry


@internal
@view
def _leaf(point: Bytes[128], stake: uint256) -> bytes32:
    # over the compact words a certificate passes: (x_hi << 128 | y_hi, x_lo, y_lo, stake)
    x_hi: uint256 = extract32(point, 0, output_type=uint256)
    y_hi: uint256 = extract32(point, 64, output_type=uint256)
    return keccak256(abi_encode((x_hi << 128) | y_hi, extract32(point, 32, output_type=uint256),
                                extract32(point, 96, output_type=uint256), stake))


@internal
def _update_registry():
    # O(n) in verifiers; only registration, exits and slashing pay it, never a certificate.
    h: bytes32 = empty(bytes32)
    for i: uint256 in range(MAX_VERIFIERS):
        if i >= self.verifier_count:
            break
        h = keccak256(concat(h, self.registry_leaf[i]))
    self.registry_hash = h


@internal
@view
def _active_stake(index: uint256) -> uint256:
    v: Verifier = self.verifiers[index]
    if v.exit_at != 0:
        return 0
    return v.stake


@internal
def _set_stake(index: uint256, stake: uint256):
    was: uint256 = self._active_stake(index)
    self.verifiers[index].stake = stake
    now_active: uint256 = self._active_stake(index)
    self.total_stake = self.total_stake - was + now_active
    if was > 0 and now_active == 0:
        self.apk_all = self._g1_add(self.apk_all, self._g1_neg(self.verifier_key[index]))
    self.registry_leaf[index] = self._leaf(self.verifier_key[index], now_active)
    self._update_registry()


@internal
def _slash_stake(index: uint256, bps: uint256) -> uint256:
    stake: uint256 = self.verifiers[index].stake
    amount: uint256 = stake * bps // BPS
    self.burned += amount
    self._set_stake(index, stake - amount)
    return amount


@external
@payable
def register(pubkey: Bytes[MAX_INPUT], point: Bytes[MAX_INPUT], pop: Bytes[MAX_INPUT]):
    """Become verifier number verifier_count with msg.value as stake; pop proves the BLS key's owner agreed."""
    assert msg.value >= min_stake, "stake below the minimum"
    assert self.verifier_count < MAX_VERIFIERS, "verifier registry is full"
    assert self.index_of_account[msg.sender] == 0, "account already registered a verifier"
    key: Bytes[48] = self._check_pubkey(pubkey, point)
    g1: Bytes[128] = slice(point, 0, 128)
    key_id: bytes32 = keccak256(key)
    assert self.index_of_pubkey[key_id] == 0, "public key already registered"
    assert self._verify(g1, key, self._g2(pop), DST_POP), "proof of possession does not verify"
    index: uint256 = self.verifier_count
    self.verifier_count = index + 1
    self.verifiers[index] = Verifier(account=msg.sender, stake=msg.value, exit_at=0, withdrawn=False)
    self.verifier_key[index] = g1
    self.verifier_pubkey[index] = key
    self.index_of_pubkey[key_id] = index + 1
    self.index_of_account[msg.sender] = index + 1
    self.total_stake += msg.value
    self.apk_all = self._g1_add(self.apk_all, g1)
    self.registry_leaf[index] = self._leaf(g1, msg.value)
    self._update_registry()
    log VerifierRegistered(index=index, account=msg.sender, pubkey=key, stake=msg.value)


@external
def begin_unbonding():
    """The sender's verifier stops counting toward quorums; its stake stays slashable until exit_at."""
    slot: uint256 = self.index_of_account[msg.sender]
    assert slot != 0, "sender has no verifier"
    index: uint256 = slot - 1
    assert self.verifiers[index].exit_at == 0, "verifier is already unbonding"
    was: uint256 = self._active_stake(index)
    exit_at: uint256 = block.timestamp + unbonding_delay
    self.verifiers[index].exit_at = exit_at
    self.total_stake -= was
    if was > 0:
        self.apk_all = self._g1_add(self.apk_all, self._g1_neg(self.verifier_key[index]))
    self.registry_leaf[index] = self._leaf(self.verifier_key[index], 0)
    self._update_registry()
    log UnbondingStarted(index=index, exit_at=exit_at)


@external
def withdraw_stake():
    """After the unbonding delay: what is left of the stake moves to the account's balance."""
    slot: uint256 = self.index_of_account[msg.sender]
    assert slot != 0, "sender has no verifier"
    index: uint256 = slot - 1
    v: Verifier = self.verifiers[index]
    assert v.exit_at != 0, "verifier is not unbonding"
    assert block.timestamp >= v.exit_at, "unbonding delay has not passed"
    assert not v.withdrawn, "stake already withdrawn"
    self.verifiers[index].stake = 0
    self.verifiers[index].withdrawn = True
    self.balances[v.account] += v.stake
    log StakeWithdrawn(index=index, account=v.account, amount=v.stake)


@external
@view
def get_registry() -> (DynArray[uint256, 768], DynArray[uint256, MAX_VERIFIERS]):
    """The registry as submit_certificate takes it: three words per key, and active stakes."""
    keys: DynArray[uint256, 768] = []
    stakes: DynArray[uint256, MAX_VERIFIERS] = []
    for i: uint256 in range(MAX_VERIFIERS):
        if i >= self.verifier_count:
            break
        point: Bytes[128] = self.verifier_key[i]
        x_hi: uint256 = extract32(point, 0, output_type=uint256)
        y_hi: uint256 = extract32(point, 64, output_type=uint256)
        keys.append((x_hi << 128) | y_hi)
        keys.append(extract32(point, 32, output_type=uint256))
        keys.append(extract32(point, 96, output_type=uint256))
        stakes.append(self._active_stake(i))
    return keys, stakes


# ---------------------------------------------------------------------------------------------
# balances


@external
@payable
def deposit():
    assert msg.value > 0, "nothing to deposit"
    self.balances[msg.sender] += msg.value
    log Deposited(account=msg.sender, amount=msg.value)


@external
@nonreentrant
def withdraw(amount: uint256):
    assert amount > 0, "nothing to withdraw"
    assert self.balances[msg.sender] >= amount, "balance too low"
    self.balances[msg.sender] -= amount
    log Withdrawn(account=msg.sender, amount=amount)
    send(msg.sender, amount)


@internal
def _take(account: address, amount: uint256, received: uint256):
    if received > 0:
        self.balances[account] += received
        log Deposited(account=account, amount=received)
    assert self.balances[account] >= amount, "balance too low"
    self.balances[account] -= amount


# ---------------------------------------------------------------------------------------------
# tasks and claims


@external
@payable
def post_task(task_id: bytes32, reward: uint256, expires_at: uint256, num_checkpoints: uint256):
    """Escrow reward (from msg.value, then the sender's balance) for the task with this id."""
    assert reward > 0, "a task's reward must be positive"
    assert expires_at > block.timestamp, "task posting is already expired"
    assert num_checkpoints >= 2 and num_checkpoints <= MAX_CHECKPOINTS, "num_checkpoints out of range"
    assert self.tasks[task_id].status == TASK_NONE, "task already posted"
    self._take(msg.sender, reward, msg.value)
    self.tasks[task_id] = Task(requester=msg.sender, reward=reward, escrow=reward, expires_at=expires_at,
                               num_checkpoints=num_checkpoints, status=TASK_OPEN, claim_id=empty(bytes32))
    log TaskPosted(task_id=task_id, requester=msg.sender, reward=reward, expires_at=expires_at,
                   num_checkpoints=num_checkpoints)


@internal
@view
def _binding_message(claim_id: bytes32, prover: address) -> Bytes[256]:
    return concat(DOMAIN_CLAIM_BIND, claim_id, convert(chain.id, bytes32), convert(self, bytes20),
                  convert(prover, bytes20))


@external
@payable
def claim_task(task_id: bytes32, claim_id: bytes32, commitment: bytes32, num_checkpoints: uint256,
               prover_pubkey: Bytes[MAX_INPUT], prover_point: Bytes[MAX_INPUT], binding_signature: Bytes[MAX_INPUT]):
    """First claim on an open task wins; the bond comes from msg.value, then the sender's balance.
    binding_signature is the claim's BLS key signing (claim_id, chain, contract, sender), so a
    claim seen in the mempool cannot be resubmitted by another account."""
    task: Task = self.tasks[task_id]
    assert task.status != TASK_NONE, "unknown task"
    assert task.status == TASK_OPEN and block.timestamp < task.expires_at, "task is no longer open for claims"
    assert num_checkpoints == task.num_checkpoints, "claim's lengths disagree with its task"
    assert self.claims[claim_id].status == CLAIM_NONE, "claim already registered"
    key: Bytes[48] = self._check_pubkey(prover_pubkey, prover_point)
    assert self._verify(slice(prover_point, 0, 128), self._binding_message(claim_id, msg.sender),
                        self._g2(binding_signature), DST_SIG), \
        "claim binding signature does not verify"
    bond: uint256 = max(prover_bond, task.reward * bond_reward_bps // BPS)
    self._take(msg.sender, bond, msg.value)
    self.tasks[task_id].status = TASK_CLAIMED
    self.tasks[task_id].claim_id = claim_id
    self.claims[claim_id] = Claim(task_id=task_id, prover=msg.sender, commitment=commitment,
                                  num_checkpoints=num_checkpoints, bond=bond,
                                  registered_at=block.timestamp, certified_at=0, status=CLAIM_PENDING,
                                  open_disputes=0)
    log ClaimRegistered(claim_id=claim_id, task_id=task_id, prover=msg.sender, prover_pubkey=key,
                        commitment=commitment, num_checkpoints=num_checkpoints, bond=bond)


# ---------------------------------------------------------------------------------------------
# settlement


@internal
@view
def _is_settled(status: uint8) -> bool:
    return status == CLAIM_PAID or status == CLAIM_SLASHED or status == CLAIM_VOID


@internal
def _settle(claim_id: bytes32, status: uint8, escrow_to: address, bond_to: address, bond_amount: uint256):
    """Close a claim: escrow to one account, bond_amount of the bond to another, the rest burned."""
    claim: Claim = self.claims[claim_id]
    task: Task = self.tasks[claim.task_id]
    self.balances[escrow_to] += task.escrow
    self.balances[bond_to] += bond_amount
    self.burned += claim.bond - bond_amount
    if escrow_to == claim.prover:
        self.tasks[claim.task_id].status = TASK_PAID
    else:
        self.tasks[claim.task_id].status = TASK_REFUNDED
    self.tasks[claim.task_id].escrow = 0
    self.claims[claim_id].bond = 0
    self.claims[claim_id].status = status


@internal
def _void(claim_id: bytes32):
    # No fraud proven, no acceptance either: the bond goes back less the unavailability slash, and the
    # task reopens with its escrow, so a prover that claims and never serves cannot take the task from
    # the others (refund_task returns the escrow once the task expires).
    claim: Claim = self.claims[claim_id]
    kept: uint256 = claim.bond - claim.bond * slash_unavailable_bps // BPS
    log ClaimVoided(claim_id=claim_id, refund=0, bond_returned=kept, bond_burned=claim.bond - kept)
    self.balances[claim.prover] += kept
    self.burned += claim.bond - kept
    self.tasks[claim.task_id].status = TASK_OPEN
    self.tasks[claim.task_id].claim_id = empty(bytes32)
    self.claims[claim_id].bond = 0
    self.claims[claim_id].status = CLAIM_VOID


@external
def submit_certificate(kind: uint8, subject: bytes32, verdict: uint8, signers: uint256,
                       signature: Bytes[MAX_INPUT], keys: DynArray[uint256, 3 * MAX_VERIFIERS],
                       stakes: DynArray[uint256, MAX_VERIFIERS]):
    """A quorum certificate: an accept on a pending claim starts its challenge window; on a dispute,
    accept upholds it (prover slashed) and reject fails it (challenger slashed). keys and stakes are
    get_registry()'s output; signers bit i is verifier i; signature is the uncompressed aggregate."""
    assert verdict == VERDICT_ACCEPT or verdict == VERDICT_REJECT, "unknown verdict"
    message: Bytes[64] = b""
    if kind == SUBJECT_CLAIM:
        status: uint8 = self.claims[subject].status  # single fields: a whole Claim is nine cold loads
        assert status != CLAIM_NONE, "certificate for unknown claim"
        assert verdict != VERDICT_REJECT, "a reject certificate settles nothing"
        assert status == CLAIM_PENDING, "claim is already decided"
        assert block.timestamp < self.claims[subject].registered_at + availability_window, \
            "certificate after the availability deadline"
        message = concat(DOMAIN_VOTE, subject, convert(verdict, bytes1))
    else:
        assert kind == SUBJECT_DISPUTE, "unknown subject kind"
        assert self.disputes[subject].status != DISPUTE_NONE, "certificate for unknown dispute"
        assert self._dispute_status(subject) == DISPUTE_OPEN, "dispute is already resolved"
        message = concat(DOMAIN_DISPUTE_VOTE, subject, convert(verdict, bytes1))

    # The check reads keys and stakes from calldata where they lie (an internal call would copy them).
    n: uint256 = len(stakes)
    assert n == self.verifier_count, "registry has the wrong number of verifiers"
    assert len(keys) == 3 * n, "registry needs 3 key words per verifier"
    assert signers != 0, "certificate has no signers"
    assert n == MAX_VERIFIERS or signers >> n == 0, "signer index outside the registry"
    sig: Bytes[256] = self._g2(signature)
    self._check_signature_point(sig)
    h: bytes32 = empty(bytes32)
    total: uint256 = 0
    signed: uint256 = 0
    # apk_all holds every key with active stake; subtracting the non-signers leaves the signers' sum,
    # so a full certificate costs no point addition at all
    apk: Bytes[128] = self.apk_all
    for i: uint256 in range(MAX_VERIFIERS):
        if i >= n:
            break
        w0: uint256 = keys[3 * i]
        w1: uint256 = keys[3 * i + 1]
        w2: uint256 = keys[3 * i + 2]
        stake: uint256 = stakes[i]
        h = keccak256(concat(h, keccak256(abi_encode(w0, w1, w2, stake))))
        total += stake
        if (signers >> i) & 1 == 1:
            assert stake > 0, "a signer has no stake"
            signed += stake
        elif stake > 0:
            apk = self._g1_add(apk, self._g1_neg(concat(convert(w0 >> 128, bytes32), convert(w1, bytes32),
                                                         convert(w0 & MASK128, bytes32), convert(w2, bytes32))))
    assert h == self.registry_hash, "registry does not match"
    assert signed * quorum_denominator >= total * quorum_numerator, "signers hold less than the quorum of stake"
    assert not self._is_infinity_g1(apk), "aggregate key is the point at infinity"
    assert self._pairing_ok(apk, self._hash_to_g2(message, DST_SIG), sig), "aggregate signature does not verify"

    if kind == SUBJECT_CLAIM:
        self.claims[subject].status = CLAIM_ACCEPTED
        self.claims[subject].certified_at = block.timestamp
        log ClaimAccepted(claim_id=subject, signers=signers, signed_stake=signed)
        return
    dispute: Dispute = self.disputes[subject]
    self.claims[dispute.claim_id].open_disputes -= 1
    if verdict == VERDICT_ACCEPT:
        self.disputes[subject].status = DISPUTE_UPHELD
        claim: Claim = self.claims[dispute.claim_id]
        task: Task = self.tasks[claim.task_id]
        reward: uint256 = claim.bond * challenger_reward_bps // BPS
        log DisputeUpheld(dispute_id=subject, claim_id=dispute.claim_id, challenger_reward=reward,
                          bond_burned=claim.bond - reward, refund=task.escrow)
        self._settle(dispute.claim_id, CLAIM_SLASHED, task.requester,
                     self.verifiers[dispute.challenger].account, reward)
    else:
        self.disputes[subject].status = DISPUTE_FAILED
        burned: uint256 = self._slash_stake(dispute.challenger, slash_failed_challenge_bps)
        log DisputeFailed(dispute_id=subject, challenger=dispute.challenger, stake_burned=burned)


@internal
@view
def _evidence_message(claim_id: bytes32, segment: uint256, claimed_root: bytes32,
                      replayed_root: bytes32) -> Bytes[256]:
    # DOMAIN_EVIDENCE || claim_id || canonical msgpack {claimed_root, replayed_root, segment}
    seg: Bytes[5] = b""
    if segment < 128:
        seg = slice(convert(segment, bytes32), 31, 1)
    elif segment < 256:
        seg = concat(b"\xcc", slice(convert(segment, bytes32), 31, 1))
    elif segment < 65536:
        seg = concat(b"\xcd", slice(convert(segment, bytes32), 30, 2))
    else:
        seg = concat(b"\xce", slice(convert(segment, bytes32), 28, 4))
    return concat(DOMAIN_EVIDENCE, claim_id, b"\x83\xacclaimed_root\xc4\x20", claimed_root,
                  b"\xadreplayed_root\xc4\x20", replayed_root, b"\xa7segment", seg)


@internal
@pure
def _merkle_root(leaf: bytes32, index: uint256, size: uint256, path: DynArray[bytes32, 128]) -> bytes32:
    # RFC 9162 §2.1.3.2, as protocol/merkle.py: leaf hashed H(0x00 || data), nodes H(0x01 || l || r)
    fn: uint256 = index
    sn: uint256 = size - 1
    result: bytes32 = sha256(concat(b"\x00", leaf))
    for node: bytes32 in path:
        assert sn != 0, "evidence path too long"
        if fn & 1 == 1 or fn == sn:
            result = sha256(concat(b"\x01", node, result))
            if fn & 1 == 0:
                for _: uint256 in range(64):
                    if fn == 0 or fn & 1 == 1:
                        break
                    fn = fn >> 1
                    sn = sn >> 1
        else:
            result = sha256(concat(b"\x01", result, node))
        fn = fn >> 1
        sn = sn >> 1
    assert sn == 0, "evidence path too short"
    return result


@external
def open_dispute(claim_id: bytes32, challenger: uint256, segment: uint256, claimed_root: bytes32,
                 claimed_root_path: DynArray[bytes32, 128], replayed_root: bytes32,
                 evidence_signature: Bytes[MAX_INPUT]):
    """A staked verifier's signed evidence that segment's replay ends elsewhere than the prover's
    committed root. Anyone may relay it; the first valid evidence on a segment holds the dispute."""
    claim: Claim = self.claims[claim_id]
    assert claim.status != CLAIM_NONE, "claim is not registered"
    assert challenger < self.verifier_count, "challenger is not a registered verifier"
    assert self._active_stake(challenger) > 0, "challenger has no stake"
    assert segment + 1 < claim.num_checkpoints, "segment outside the claim"
    assert len(claimed_root_path) <= MAX_PATH, "evidence path too long"
    assert claimed_root != replayed_root, "claimed and replayed roots are equal"
    assert self._merkle_root(claimed_root, segment + 1, claim.num_checkpoints, claimed_root_path) == \
        claim.commitment, "claimed root is not in the prover's commitment"
    message: Bytes[256] = self._evidence_message(claim_id, segment, claimed_root, replayed_root)
    assert self._verify(self.verifier_key[challenger], message, self._g2(evidence_signature), DST_SIG), \
        "evidence signature does not verify"
    dispute_id: bytes32 = sha256(concat(DOMAIN_DISPUTE_ID, claim_id, slice(convert(segment, bytes32), 24, 8)))
    assert self.disputes[dispute_id].status == DISPUTE_NONE, "a dispute on this segment already exists"
    assert not self._is_settled(claim.status), "claim is already settled"
    assert claim.certified_at == 0 or block.timestamp < claim.certified_at + challenge_window, \
        "the challenge window has closed"
    self.disputes[dispute_id] = Dispute(claim_id=claim_id, segment=segment, challenger=challenger,
                                        claimed_root=claimed_root, replayed_root=replayed_root,
                                        opened_at=block.timestamp, status=DISPUTE_OPEN)
    self.claims[claim_id].open_disputes += 1
    log DisputeOpened(dispute_id=dispute_id, claim_id=claim_id, challenger=challenger, segment=segment,
                      claimed_root=claimed_root, replayed_root=replayed_root)


@external
def report_double_vote(kind: uint8, subject: bytes32, verifier: uint256, accept_signature: Bytes[MAX_INPUT],
                       reject_signature: Bytes[MAX_INPUT]):
    """Anyone may submit two signatures of one verifier on both verdicts of one subject."""
    assert verifier < self.verifier_count, "not a registered verifier"
    domain: Bytes[19] = b""
    if kind == SUBJECT_CLAIM:
        domain = DOMAIN_VOTE
    else:
        assert kind == SUBJECT_DISPUTE, "unknown subject kind"
        domain = DOMAIN_DISPUTE_VOTE
    key: bytes32 = keccak256(concat(convert(verifier, bytes32), convert(kind, bytes1), subject))
    assert not self.double_vote_slashed[key], "double vote already slashed"
    point: Bytes[128] = self.verifier_key[verifier]
    assert self._verify(point, concat(domain, subject, b"\x01"), self._g2(accept_signature), DST_SIG), \
        "accept signature does not verify"
    assert self._verify(point, concat(domain, subject, b"\x00"), self._g2(reject_signature), DST_SIG), \
        "reject signature does not verify"
    self.double_vote_slashed[key] = True
    burned: uint256 = self._slash_stake(verifier, slash_double_vote_bps)
    log DoubleVoteSlashed(verifier=verifier, kind=kind, subject=subject, stake_burned=burned)


# ---------------------------------------------------------------------------------------------
# deadlines: anyone may apply one that has passed


@internal
@view
def _dispute_status(dispute_id: bytes32) -> uint8:
    d: Dispute = self.disputes[dispute_id]
    if d.status == DISPUTE_OPEN and self._is_settled(self.claims[d.claim_id].status):
        return DISPUTE_MOOT
    return d.status


@external
@view
def dispute_status(dispute_id: bytes32) -> uint8:
    """As stored, except an open dispute whose claim has been settled otherwise is moot."""
    return self._dispute_status(dispute_id)


@external
def expire_dispute(dispute_id: bytes32):
    """An open dispute past its window expires and voids its claim (no fraud proven, no payment)."""
    d: Dispute = self.disputes[dispute_id]
    assert d.status != DISPUTE_NONE, "unknown dispute"
    assert self._dispute_status(dispute_id) == DISPUTE_OPEN, "dispute is not open"
    assert block.timestamp >= d.opened_at + dispute_window, "dispute window has not passed"
    self.disputes[dispute_id].status = DISPUTE_EXPIRED
    self.claims[d.claim_id].open_disputes -= 1
    log DisputeExpired(dispute_id=dispute_id, claim_id=d.claim_id)
    self._void(d.claim_id)


@external
def settle_claim(claim_id: bytes32):
    """Pay an accepted claim after its challenge window, or void a pending one after its
    availability window; either only while no dispute on it is open."""
    claim: Claim = self.claims[claim_id]
    assert claim.status != CLAIM_NONE, "unknown claim"
    assert not self._is_settled(claim.status), "claim is already settled"
    assert claim.open_disputes == 0, "a dispute on the claim is open"
    if claim.status == CLAIM_ACCEPTED:
        assert block.timestamp >= claim.certified_at + challenge_window, "challenge window has not passed"
        task: Task = self.tasks[claim.task_id]
        log ClaimPaid(claim_id=claim_id, prover=claim.prover, reward=task.escrow, bond=claim.bond)
        self._settle(claim_id, CLAIM_PAID, claim.prover, claim.prover, claim.bond)
    else:
        assert block.timestamp >= claim.registered_at + availability_window, "availability window has not passed"
        self._void(claim_id)


@external
def refund_task(task_id: bytes32):
    """An open, unclaimed task at or after its expiry returns its escrow to the requester."""
    task: Task = self.tasks[task_id]
    assert task.status != TASK_NONE, "unknown task"
    assert task.status == TASK_OPEN, "task is not open"
    assert block.timestamp >= task.expires_at, "task has not expired"
    self.tasks[task_id].status = TASK_REFUNDED
    self.tasks[task_id].escrow = 0
    self.balances[task.requester] += task.escrow
    log TaskRefunded(task_id=task_id, requester=task.requester, amount=task.escrow)
