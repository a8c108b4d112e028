// Detection of the data caches and the FASTMLP_CACHE_SIZES override (see cpu_cache.h).
#include "cpu_cache.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

#if defined(FASTMLP_X86) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define FASTMLP_HAVE_CPUID 1
#endif

namespace fastmlp {

namespace {

// One cache as CPUID or sysfs describe it.
struct CacheLevel {
  int level = 0;
  bool data = false;  // data or unified (not instruction-only)
  index_t size = 0;
  int ways = 0, line = 0, sharing = 1;
};

void record(CacheSizes& out, const CacheLevel& c) {
  if (!c.data || c.size <= 0) return;
  if (c.level == 1) out.l1d = c.size, out.l1d_ways = c.ways;
  if (c.level == 2) out.l2 = c.size, out.l2_ways = c.ways;
  if (c.level == 3) out.l3 = c.size, out.l3_ways = c.ways, out.l3_sharing = c.sharing;
  if (c.level == 1 && c.line > 0) out.line = c.line;
}

#ifdef FASTMLP_HAVE_CPUID
// Leaf 4 (Intel) and 0x8000001D (AMD) share one layout, one sub-leaf per cache until type 0:
//   EAX[4:0] type (1 data, 2 instruction, 3 unified), EAX[7:5] level,
//   EAX[25:14] logical CPUs sharing it − 1; EBX[11:0] line − 1, EBX[21:12] partitions − 1,
//   EBX[31:22] ways − 1; ECX sets − 1. size = ways · partitions · line · sets.
bool read_cpuid_leaf(unsigned leaf, CacheSizes& out) {
  bool any = false;
  for (unsigned sub = 0; sub < 16; ++sub) {
    unsigned a, b, c, d;
    __cpuid_count(leaf, sub, a, b, c, d);
    const unsigned type = a & 0x1f;
    if (type == 0) break;
    CacheLevel cache;
    cache.level = static_cast<int>((a >> 5) & 0x7);
    cache.data = type == 1 || type == 3;
    cache.sharing = static_cast<int>((a >> 14) & 0xfff) + 1;
    cache.line = static_cast<int>(b & 0xfff) + 1;
    cache.ways = static_cast<int>((b >> 22) & 0x3ff) + 1;
    const index_t partitions = ((b >> 12) & 0x3ff) + 1;
    cache.size = static_cast<index_t>(cache.ways) * partitions * cache.line * (index_t{c} + 1);
    record(out, cache);
    any = true;
  }
  return any && out.l1d > 0;
}

bool detect_cpuid(CacheSizes& out) {
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  const unsigned max_leaf = a;
  // "AuthenticAMD" and "HygonGenuine" describe caches in 0x8000001D when TOPOEXT
  // (0x80000001 ECX bit 22) is set; Intel (and AMD without TOPOEXT: zeros) in leaf 4.
  const bool amd = (b == 0x68747541 && d == 0x69746e65) || (b == 0x6f677948 && d == 0x6e65476e);
  if (amd && __get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x8000001D &&
      __get_cpuid(0x80000001, &a, &b, &c, &d) && (c & (1u << 22)) &&
      read_cpuid_leaf(0x8000001D, out))
    return true;
  return max_leaf >= 4 && read_cpuid_leaf(4, out);
}
#endif

// "48K", "1024K", "32M" as sysfs writes them.
index_t parse_size(const std::string& text);

std::string read_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// "0-7,16-23" → 16.
int count_cpus(const std::string& list) {
  int count = 0;
  std::size_t pos = 0;
  while (pos < list.size()) {
    std::size_t end = list.find(',', pos);
    if (end == std::string::npos) end = list.size();
    const std::string range = list.substr(pos, end - pos);
    const std::size_t dash = range.find('-');
    if (dash == std::string::npos) ++count;
    else count += std::atoi(range.c_str() + dash + 1) - std::atoi(range.c_str()) + 1;
    pos = end + 1;
  }
  return count > 0 ? count : 1;
}

bool detect_sysfs(CacheSizes& out) {
  const std::string root = "/sys/devices/system/cpu/cpu0/cache/index";
  for (int i = 0; i < 16; ++i) {
    const std::string dir = root + std::to_string(i) + "/";
    const std::string level = read_line(dir + "level");
    if (level.empty()) break;
    CacheLevel cache;
    cache.level = std::atoi(level.c_str());
    const std::string type = read_line(dir + "type");
    cache.data = type == "Data" || type == "Unified";
    try {
      cache.size = parse_size(read_line(dir + "size"));
    } catch (const std::invalid_argument&) {
      continue;
    }
    cache.ways = std::atoi(read_line(dir + "ways_of_associativity").c_str());
    cache.line = std::atoi(read_line(dir + "coherency_line_size").c_str());
    cache.sharing = count_cpus(read_line(dir + "shared_cpu_list"));
    record(out, cache);
  }
  return out.l1d > 0;
}

// Typical of the x86 and Arm server cores of the last decade; used for what detection missed.
constexpr index_t kDefaultL1d = 32 * 1024, kDefaultL2 = 512 * 1024;
constexpr index_t kMaxCacheSize = index_t{16} << 30;  // the packed B block is up to 3/4 of L3
constexpr int kDefaultL1dWays = 8, kDefaultL2Ways = 8, kDefaultL3Ways = 16, kDefaultLine = 64;

void fill_gaps(CacheSizes& c) {
  if (c.l1d <= 0) c.l1d = kDefaultL1d;
  if (c.l2 < c.l1d) c.l2 = std::max(kDefaultL2, 4 * c.l1d);
  if (c.l3 != 0 && c.l3 < c.l2) c.l3 = 0;
  if (c.l1d_ways <= 0) c.l1d_ways = kDefaultL1dWays;
  if (c.l2_ways <= 0) c.l2_ways = kDefaultL2Ways;
  if (c.l3_ways <= 0) c.l3_ways = kDefaultL3Ways;
  if (c.l3_sharing <= 0) c.l3_sharing = 1;
  if (c.line <= 0) c.line = kDefaultLine;
}

index_t parse_size(const std::string& text) {
  std::size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits])))
    ++digits;
  if (digits == 0 || digits > 9) throw std::invalid_argument("not a size: '" + text + "'");
  index_t value = std::atoll(text.substr(0, digits).c_str());
  std::string unit = text.substr(digits);
  for (char& ch : unit) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  if (unit.size() > 1 && (unit.substr(1) == "B" || unit.substr(1) == "IB")) unit.resize(1);
  if (unit == "K") value <<= 10;
  else if (unit == "M") value <<= 20;
  else if (unit == "G") value <<= 30;
  else if (!unit.empty() && unit != "B")
    throw std::invalid_argument("not a size: '" + text + "' (expected e.g. 48K, 2M, 32M)");
  return value;
}

int parse_count(const std::string& key, const std::string& text) {
  const index_t value = parse_size(text);
  if (text.find_first_not_of("0123456789") != std::string::npos || value < 1 || value > 4096)
    throw std::invalid_argument(key + "=" + text + ": expected a whole number from 1 to 4096");
  return static_cast<int>(value);
}

std::string trim(const std::string& s) {
  const std::size_t first = s.find_first_not_of(" \t");
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(" \t") - first + 1);
}

}  // namespace

CacheSizes detect_cache_sizes() {
  CacheSizes c;
#ifdef FASTMLP_HAVE_CPUID
  if (detect_cpuid(c)) c.source = "cpuid";
#endif
  if (c.source.empty()) {
    c = CacheSizes{};
    if (detect_sysfs(c)) c.source = "sysfs";
    else c = CacheSizes{}, c.source = "default";
  }
  fill_gaps(c);
  return c;
}

CacheSizes apply_cache_override(const CacheSizes& base, const std::string& spec) {
  CacheSizes c = base;
  std::size_t pos = 0;
  bool any = false;
  while (pos <= spec.size()) {
    std::size_t end = spec.find(',', pos);
    if (end == std::string::npos) end = spec.size();
    const std::string item = trim(spec.substr(pos, end - pos));
    pos = end + 1;
    if (item.empty()) continue;
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos)
      throw std::invalid_argument("'" + item + "' is not key=value");
    const std::string key = trim(item.substr(0, eq)), value = trim(item.substr(eq + 1));
    auto size = [&] {
      try {
        return parse_size(value);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(key + ": " + e.what());
      }
    };
    if (key == "l1d") c.l1d = size();
    else if (key == "l2") c.l2 = size();
    else if (key == "l3") c.l3 = size();
    else if (key == "l1d_ways") c.l1d_ways = parse_count(key, value);
    else if (key == "l2_ways") c.l2_ways = parse_count(key, value);
    else if (key == "l3_ways") c.l3_ways = parse_count(key, value);
    else if (key == "l3_sharing") c.l3_sharing = parse_count(key, value);
    else if (key == "line") c.line = parse_count(key, value);
    else
      throw std::invalid_argument("unknown key '" + key + "' (expected l1d, l2, l3, l1d_ways, "
                                  "l2_ways, l3_ways, l3_sharing, line)");
    any = true;
  }
  if (!any) throw std::invalid_argument("no key=value given");
  if (c.l1d < 1024) throw std::invalid_argument("l1d must be at least 1K");
  if (c.l2 < c.l1d) throw std::invalid_argument("l2 must be at least l1d");
  if (c.l3 != 0 && c.l3 < c.l2) throw std::invalid_argument("l3 must be 0 (none) or at least l2");
  if (std::max({c.l1d, c.l2, c.l3}) > kMaxCacheSize)
    throw std::invalid_argument("a cache of more than 16G is not plausible");
  if ((c.line & (c.line - 1)) != 0 || c.line < 16)
    throw std::invalid_argument("line must be a power of two, at least 16");
  c.source += "+FASTMLP_CACHE_SIZES";
  return c;
}

const CacheSizes& cache_sizes() {
  static const CacheSizes sizes = [] {
    const CacheSizes detected = detect_cache_sizes();
    const char* spec = std::getenv("FASTMLP_CACHE_SIZES");
    if (!spec || !*spec) return detected;
    try {
      return apply_cache_override(detected, spec);
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(std::string("FASTMLP_CACHE_SIZES='") + spec + "': " + e.what());
    }
  }();
  return sizes;
}

}  // namespace fastmlp
