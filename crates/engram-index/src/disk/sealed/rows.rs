//! Reading full vectors back out of DiskANN's sector file (compaction,
//! merges, `get_vector`): where each row sits.

use diskann_disk::data_model::GraphHeader;
use diskann_disk::disk_index_build_parameter::DISK_SECTOR_LEN;

use crate::error::Result;

/// Where rows sit in DiskANN's disk index: sector 0 is the header (after
/// an 8-byte preamble); small rows are packed `per_block` to a sector, large
/// rows start on a sector boundary. Rows begin with the full vector.
pub(super) struct RowLayout {
    block: usize,
    node_len: usize,
    per_block: usize,
    sectors_per_node: usize,
}

impl RowLayout {
    /// From the first sector of the file.
    pub(super) fn parse(first_sector: &[u8]) -> Result<RowLayout> {
        let header =
            GraphHeader::try_from(first_sector.get(8..DISK_SECTOR_LEN).unwrap_or_default())?;
        let meta = header.metadata();
        let block = header.block_size() as usize;
        let node_len = meta.node_len as usize;
        let per_block = meta.num_nodes_per_block as usize;
        Ok(RowLayout {
            block,
            node_len,
            per_block,
            sectors_per_node: if per_block > 0 {
                1
            } else {
                node_len.div_ceil(block.max(1))
            },
        })
    }

    /// Byte offset of row `slot` in the file.
    pub(super) fn offset(&self, slot: usize) -> usize {
        match slot.checked_div(self.per_block) {
            Some(sector) => (1 + sector) * self.block + (slot % self.per_block) * self.node_len,
            None => (1 + slot * self.sectors_per_node) * self.block,
        }
    }
}

/// Little-endian `f32`s of `raw`.
pub(super) fn floats(raw: &[u8]) -> impl Iterator<Item = f32> + '_ {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
}
