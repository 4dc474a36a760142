// SPDX-License-Identifier: BSL-1.0
// The hash of task ids and group names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace tether::inline v1::detail {

/// A 64-bit hash of an id or a group name, whose low bits are as well mixed as its high ones (the id tables take
/// the low bits). Inline, rather than std::hash, so that a submit does not call into libstdc++: after an idle
/// spell every code and data line of that call is a cache miss, and a submit to a sleeping pool paid about 0.4 µs
/// there. Not seeded, like std::hash: ids come from the application, not from an attacker.
inline std::uint64_t name_hash(std::string_view name) noexcept {
  constexpr std::uint64_t mul = 0x9e3779b97f4a7c15;  // odd: 2^64 over the golden ratio
  std::uint64_t h = name.size() * mul;
  // Each step is a bijection of the running value for a given word, so names of one length that differ in one
  // word never collide.
  const auto step = [&h](std::uint64_t word) {
    h = (h ^ word) * mul;
    h ^= h >> 31;
  };
  const char* p = name.data();
  std::size_t left = name.size();
  for (; left >= 8; p += 8, left -= 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);
    step(word);
  }
  if (left != 0) {
    std::uint64_t word = 0;
    if (name.size() >= 8) {
      std::memcpy(&word, name.data() + name.size() - 8, 8);  // the last 8 bytes, overlapping the word before
    } else {
      for (std::size_t i = 0; i < left; ++i) word |= std::uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
    }
    step(word);
  }
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9;
  return h ^ (h >> 32);
}

/// name_hash as the hasher of an unordered container keyed by names; transparent, so a string_view finds a
/// std::string key without a copy.
struct name_hasher {
  using is_transparent = void;
  std::size_t operator()(std::string_view name) const noexcept { return name_hash(name); }
};

}  // namespace tether::inline v1::detail
