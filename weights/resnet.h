// The ResNet family as data: an architecture record (what the converter writes
// as JSON into a weights file's metadata) and the network it describes.
//
// One description serves every backend and every depth: ImageNet stems
// (7x7/2 conv + 3x3/2 max-pool) and CIFAR stems (3x3/1, no pool), BasicBlock
// and Bottleneck (with groups and width per group, which covers
// wide_resnet50_2 and resnext50_32x4d).  Parameter names are torchvision's.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <vector>

namespace gati {

enum class BlockKind { Basic, Bottleneck };
enum class StemKind { ImageNet, Cifar };

struct Arch {
  std::string name;
  BlockKind block = BlockKind::Basic;
  std::vector<int> layers;  // blocks per stage
  std::vector<int> widths;  // planes per stage
  StemKind stem = StemKind::ImageNet;
  int stem_width = 64;
  int groups = 1;
  int width_per_group = 64;
  int in_channels = 3;
  int input_h = 224, input_w = 224;
  int num_classes = 1000;
  std::vector<float> mean, std;  // input normalisation, one per input channel
  double bn_eps = 1e-5;

  // Parses and validates; errors name the field and list valid values.
  static Arch from_json(const std::string& text);
  std::string to_json() const;
};

struct ConvSpec {
  std::string name;  // weight is name + ".weight"
  std::string bn;    // batch norm folded into it (prefix of .weight/.bias/...)
  int cin = 0, cout = 0, kernel = 1, stride = 1, pad = 0, groups = 1;
};

struct BlockSpec {
  std::string name;  // "layer2.0"
  int stage = 0, index = 0;
  std::vector<int> convs;  // indices into Network::convs, in order
  int downsample = -1;     // index into Network::convs, or -1 for identity
  int out_channels = 0;
};

struct Network {
  Arch arch;
  std::vector<ConvSpec> convs;  // stem first, then block convs and projections
  int stem = 0;                 // index of the stem conv
  bool stem_maxpool = false;
  std::vector<BlockSpec> blocks;  // every residual block = one exit point after it
  int features = 0;               // channels into the classifier
  std::string fc = "fc";
};

Network describe(const Arch& arch);

// Output size of a convolution or pool along one axis.
inline int conv_out(int in, int kernel, int stride, int pad) { return (in + 2 * pad - kernel) / stride + 1; }

}  // namespace gati
